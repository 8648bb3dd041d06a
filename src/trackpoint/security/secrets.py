"""Reading a secret: from an environment variable or from a file relative to data_dir, the one rule every secret
option follows (signing and pseudonymisation keys, postback secrets, price keys, collectors' passwords).

A secret option is a pair `<name>_env` / `<name>_file` of which exactly one is set (`one_of_problem`, the config
rule); `SecretError` names the option. A config struct whose secrets need more than reading (a format, a length)
says how to read them as a `SecretHolder`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

from trackpoint.config.load import KeyPath
from trackpoint.config.model import one_of_problem

MIN_SECRET_BYTES = 16


class SecretSourceLike(Protocol):
    """A `secret_env` / `secret_file` pair (SecretSource, SigningKey)."""

    @property
    def secret_env(self) -> str | None: ...

    @property
    def secret_file(self) -> str | None: ...


@runtime_checkable
class SecretHolder(Protocol):
    """A config struct (a component's, typically) that says how its secrets are read: `config check`, `run` and
    reload call each reader before any worker starts (security/resolve.py), so a key in the wrong format is one
    clear error, not workers failing at start. Other structs' `*_env` and `*_file` options are read as they are."""

    def secret_readers(self, path: KeyPath, data_dir: str) -> Iterator[tuple[KeyPath, Callable[[], object]]]:
        """(key path of the option, a reader raising SecretError, OSError or ValueError) of each secret, the struct
        being at `path` in the configuration."""
        ...


class SecretError(ValueError):
    """A secret that cannot be read; the message starts with the option (e.g. `secret_file: cannot read ...`)."""

    def __init__(self, option: str, reason: str) -> None:
        super().__init__(f"{option}: {reason}")
        self.option = option
        self.reason = reason


def secret_option(name: str, env: str | None) -> str:
    """The option a pair's secret comes from: `<name>_env` when set, else `<name>_file`."""
    return f"{name}_env" if env is not None else f"{name}_file"


def secret_path(file: str, data_dir: str) -> Path:
    """Where a `*_file` option points: relative to data_dir unless absolute (never the working directory)."""
    return Path(data_dir) / file  # an absolute file stays absolute


def env_secret(variable: str, option: str, environ: Mapping[str, str] = os.environ) -> str:
    """The value of an environment variable an option names; SecretError when it is unset or empty."""
    value = environ.get(variable)
    if not value:
        raise SecretError(option, f"environment variable {variable} is not set (or is empty)")
    return value


def read_secret(
    name: str, env: str | None, file: str | None, data_dir: str, *, min_bytes: int = MIN_SECRET_BYTES
) -> bytes:
    """The secret of a `<name>_env` / `<name>_file` pair, surrounding whitespace stripped, at least `min_bytes`
    long; SecretError naming the option otherwise."""
    problem = one_of_problem(name, env, file)
    if problem is not None:
        raise SecretError(f"{name}_env/{name}_file", problem)
    if env is not None:
        secret = env_secret(env, f"{name}_env").strip().encode("utf-8")
    else:
        assert file is not None
        path = secret_path(file, data_dir)
        try:
            secret = path.read_bytes().strip()
        except OSError as exc:
            raise SecretError(f"{name}_file", f"cannot read {path}: {exc.strerror or exc}") from None
    if len(secret) < min_bytes:
        raise SecretError(secret_option(name, env), f"a secret needs at least {min_bytes} bytes")
    return secret


def read_source(source: SecretSourceLike, data_dir: str) -> bytes:
    """The secret of a `secret_env` / `secret_file` pair (see `read_secret`)."""
    return read_secret("secret", source.secret_env, source.secret_file, data_dir)
