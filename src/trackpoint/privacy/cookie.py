"""The first-party user id cookie: the id a request carries (or a new one) in dims.uid, and the Set-Cookie line.

Only event types whose response sets the cookie build one of these; the others pay nothing.
"""

from __future__ import annotations

import re

from trackpoint.config.model import FieldSpec, UserIdCookie
from trackpoint.config.private import UID_DIM
from trackpoint.event import Event, random_id

# The ids this tracker issues (random_id: 32 lowercase hex); anything else in the cookie is replaced.
_OUR_ID = re.compile(r"[0-9a-f]{32}")


def uid_field(config: UserIdCookie) -> FieldSpec:
    """The field that reads the cookie into dims.uid. Generous max_len: a mangled cookie is replaced, not a 400."""
    return FieldSpec(source="cookie", name=config.name, max_len=4096)


class UidCookie:
    """Gives each event a user id and makes the Set-Cookie header for a new one."""

    __slots__ = ("attributes", "prefix")

    def __init__(self, config: UserIdCookie) -> None:
        self.prefix = b"Set-Cookie: " + config.name.encode("ascii") + b"="
        domain = b"; Domain=" + config.domain.encode("ascii") if config.domain else b""
        max_age = config.max_age_days * 86_400
        self.attributes = b"; Max-Age=%d; Path=/%s; SameSite=None; Secure; HttpOnly\r\n" % (max_age, domain)

    def assign(self, event: Event) -> bytes | None:
        """Keeps the id the request carries; otherwise puts a new one in dims.uid and returns its Set-Cookie line
        (sent only if consent allows)."""
        dims = event.dims
        current = dims.get(UID_DIM)
        if current is not None and _OUR_ID.fullmatch(current):
            return None
        dims[UID_DIM] = uid = random_id(event.ts)
        return self.prefix + uid.encode("ascii") + self.attributes
