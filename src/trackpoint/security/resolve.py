"""Resolving every secret a configuration names (environment variables and files) before any worker starts.

`config check`, `run` and a reload call `unresolved_secrets`: a missing secret is reported by its option's key path
instead of crash-looping the workers that would read it. The secrets are read with the readers the workers use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from trackpoint.config.load import KeyPath, LoadedConfig, config_error
from trackpoint.config.model import AdminConfig, Config, PostbackAuthSpec, SecretSource, SigningConfig
from trackpoint.security.admin_token import read_admin_token, token_configured
from trackpoint.security.postback_auth import read_advertiser_secret
from trackpoint.security.secrets import (
    SecretError,
    SecretHolder,
    env_secret,
    read_source,
    secret_option,
    secret_path,
)
from trackpoint.security.signing import key_path, load_key


def resolve_secrets(loaded: LoadedConfig) -> None:
    """Reads every secret the configuration names (environment variables and files), as the workers will; raises
    ConfigError naming each option whose secret is missing or unusable. Called by `config check`, before workers
    start and on reload: a missing secret is one clear error, not workers dying at start."""
    problems = list(unresolved_secrets(loaded.config))
    if problems:
        raise config_error(loaded.source, problems)


def unresolved_secrets(config: Config) -> Iterator[tuple[KeyPath, str]]:
    """Each secret option whose variable is unset or empty, or whose file cannot be read (or holds no valid key),
    as (key path of the option, reason). Options of any component, plugins' included, whose name ends in `_env`
    name an environment variable; a `SecretSource` and the core key structs are read with their own readers, a
    `SecretHolder` (a component's struct) with those it names."""
    yield from _walk(config, (), config.data_dir)


def _walk(value: object, path: KeyPath, data_dir: str) -> Iterator[tuple[KeyPath, str]]:
    if isinstance(value, SigningConfig):
        for key_id, key in value.keys.items():
            if key.generate and key.secret_file is not None and not key_path(key, data_dir).exists():
                continue  # created on first start
            where = (*path, "keys", key_id, secret_option("secret", key.secret_env))
            yield from _read(where, load_key, key_id, key, data_dir)
    elif isinstance(value, AdminConfig):
        if token_configured(value):  # else generated on first start
            yield from _read((*path, secret_option("token", value.token_env)), read_admin_token, value, data_dir)
    elif isinstance(value, PostbackAuthSpec):
        for advertiser, source in value.secrets.items():
            where = (*path, "secrets", advertiser, secret_option("secret", source.secret_env))
            yield from _read(where, read_advertiser_secret, advertiser, source, data_dir)
    elif isinstance(value, SecretSource):
        yield from _read((*path, secret_option("secret", value.secret_env)), read_source, value, data_dir)
    elif isinstance(value, SecretHolder):
        for where, reader in value.secret_readers(path, data_dir):
            yield from _read(where, reader)
    elif isinstance(value, msgspec.Struct):
        for field in msgspec.structs.fields(value):
            member = getattr(value, field.name)
            where = (*path, field.encode_name)
            if field.name.endswith("_env") and isinstance(member, str):
                yield from _read(where, env_secret, member, field.name)
            elif field.name.endswith("_env") and isinstance(member, dict):  # e.g. kafka's properties_env
                for key, variable in member.items():
                    yield from _read((*where, key), env_secret, variable, field.name)
            elif field.name.endswith("_file") and isinstance(member, str):  # e.g. nats' credentials_file
                yield from _read(where, secret_path(member, data_dir).read_bytes)
            else:
                yield from _walk(member, where, data_dir)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, (*path, key), data_dir)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(item, (*path, index), data_dir)


def _read(where: KeyPath, reader: Callable[..., object], *args: Any) -> Iterator[tuple[KeyPath, str]]:
    try:
        reader(*args)
    except SecretError as exc:
        yield where, exc.reason  # the key path already names the option
    except (OSError, ValueError) as exc:
        yield where, str(exc) if not isinstance(exc, OSError) else f"cannot read {exc.filename}: {exc.strerror}"
