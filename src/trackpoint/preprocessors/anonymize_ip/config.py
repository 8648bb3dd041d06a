"""Options of the anonymize_ip preprocessor (the `type: anonymize_ip` entries of `preprocessors:`)."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from trackpoint.config.model import PreprocessorBase
from trackpoint.privacy.network import IPV4_PREFIX, IPV6_PREFIX


class AnonymizeIpConfig(PreprocessorBase, tag="anonymize_ip"):
    """Truncates the client IP before it is stored: IPv4 to /24, IPv6 to /48 by default."""

    ipv4_prefix: Annotated[int, Meta(ge=0, le=32, description="Bits of an IPv4 address kept.")] = IPV4_PREFIX
    ipv6_prefix: Annotated[int, Meta(ge=0, le=128, description="Bits of an IPv6 address kept.")] = IPV6_PREFIX
