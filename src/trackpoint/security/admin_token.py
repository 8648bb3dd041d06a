"""The admin port's bearer token: read from the environment or a file, or generated into `data_dir/keys/` on first
use, and checked in constant time. The probes (`/healthz`, `/readyz`, `/startupz`) are open; every other admin route
needs the token.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterator
from pathlib import Path

from trackpoint.config.model import AdminConfig, Config
from trackpoint.security.keyfile import create_key_file
from trackpoint.security.secrets import SecretError, read_secret

GENERATED_TOKEN_FILE = "keys/admin.token"
NO_TOKEN_REFUSAL = (
    "refusing to serve the admin port on {host} without a configured token: set admin.token_env or "
    "admin.token_file (or bind admin.host to 127.0.0.1)"
)


class AdminTokenError(ValueError):
    """The configured admin token cannot be read (missing variable or file, too short)."""


def token_path(admin: AdminConfig, data_dir: str) -> Path:
    """The token's file: `token_file` (relative to data_dir unless absolute), else the generated one."""
    return Path(data_dir) / (admin.token_file or GENERATED_TOKEN_FILE)  # an absolute token_file stays absolute


def token_configured(admin: AdminConfig) -> bool:
    return admin.token_env is not None or admin.token_file is not None


def read_admin_token(admin: AdminConfig, data_dir: str) -> bytes:
    """The admin token; with none configured, the generated one (created, mode 0600, on first use)."""
    if not token_configured(admin):
        create_key_file(token_path(admin, data_dir))
    file = None if admin.token_env else admin.token_file or GENERATED_TOKEN_FILE  # read_secret joins data_dir
    try:  # the rule of every secret: at least 16 bytes, surrounding whitespace ignored
        return read_secret("token", admin.token_env, file, data_dir)
    except SecretError as exc:
        raise AdminTokenError(f"admin {exc}") from None


def check_admin_token(config: Config) -> Iterator[tuple[tuple[str, ...], str]]:
    """The admin section's check, as the loader runs it (registered by the built-in plugin)."""
    yield from check_admin(config.admin)


def check_admin(admin: AdminConfig) -> Iterator[tuple[tuple[str, ...], str]]:
    """A non-loopback admin port needs a token the operator configured (a generated one protects nothing anyone
    was given); `trackpoint run` checks it again after `--admin-host`."""
    if not is_loopback(admin.host) and not token_configured(admin):
        yield ("admin", "host"), NO_TOKEN_REFUSAL.format(host=admin.host)


def is_loopback(host: str) -> bool:
    """Whether a bind address only takes connections from this machine (`localhost` included)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


class BearerCheck:
    """Checks an `Authorization` header against the token, in constant time."""

    __slots__ = ("token",)

    def __init__(self, token: bytes) -> None:
        self.token = token

    def allows(self, authorization: str | None) -> bool:
        if authorization is None:
            return False
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":  # the scheme is case-insensitive (RFC 9110 §11.1)
            return False
        return hmac.compare_digest(credentials.strip().encode("latin-1", "replace"), self.token)
