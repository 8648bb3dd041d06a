"""What `ship.storage_options` may hold for each object store, read from the installed fsspec backend itself (its
constructor's parameters, and those of what it hands the rest to), so that a misspelt or unknown option is a
configuration error, found without any network access: s3fs failed on it at every upload, adlfs and gcsfs ignored it.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from trackpoint.config.load import did_you_mean

# The options of every fsspec filesystem: AbstractFileSystem's instance cache and its listings cache (DirCache).
FSSPEC_OPTIONS = frozenset({"skip_instance_cache", "use_listings_cache", "listings_expiry_time", "max_paths"})
# Set by the shipper, which uses the blocking API on the loop fsspec runs: `asynchronous: true` broke every upload.
SHIPPER_OWNS = frozenset({"asynchronous", "loop"})
# What YAML reads as text but an operator meant as a flag (`anon: "false"` is true to Python: anonymous access).
_QUOTED_BOOLEANS = frozenset({"true", "false", "yes", "no", "on", "off", "0", "1"})
MAX_LISTED = 40  # known names listed in a message; beyond, the closest one only


@dataclass(frozen=True)
class Backend:
    """The storage options one backend takes: `names` at the top (None: it hands the rest to something whose
    options cannot be read, so names are not checked), and the options that are themselves mappings of options,
    with the names each takes (read when the option is given)."""

    module: str
    names: frozenset[str] | None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    # option -> (what it is handed to, for messages; the names that takes)
    nested: Mapping[str, tuple[str, Callable[[], frozenset[str]]]] = field(default_factory=dict)


def problems(scheme: str, options: Mapping[str, Any]) -> Iterator[tuple[tuple[str, ...], str]]:
    """Each option of `options` the backend of `scheme` cannot take, by its key path under storage_options: an
    unknown name (with the closest known one), a flag given as text, an endpoint_url that is not an http(s) URL, a
    `*_kwargs` option that is not a mapping, or a name unknown in a nested mapping (s3fs's client_kwargs, ...)."""
    try:
        backend = describe(scheme.lower())
    except Exception as exc:  # a broken installation: the shipper would fail the same way, at its first pass
        yield (), f"the {scheme}:// backend cannot be loaded to check the options: {type(exc).__name__}: {exc}"
        return
    for name, value in options.items():
        if name in SHIPPER_OWNS:
            yield (name,), "set by trackpoint's shipper (it uploads with the blocking API), not an option here"
        elif backend.names is not None and name not in backend.names:
            yield (name,), _unknown(name, backend.names, backend.module)
        elif isinstance(backend.defaults.get(name), bool) and isinstance(value, str):
            if value.lower() in _QUOTED_BOOLEANS:
                yield (name,), f"{value!r} is text, which counts as true: write true or false, without quotes"
        elif name == "endpoint_url" and value is not None and not _http_url(value):
            yield (name,), f"{value!r} is not an http(s) URL (`https://host[:port]`, e.g. `http://minio:9000`)"
        elif name.endswith("_kwargs") and value is not None:
            if not isinstance(value, Mapping):
                yield (name,), "a mapping of options"
            elif name in backend.nested:
                target, names = backend.nested[name]
                known = names()
                for key in value:
                    if key not in known:
                        yield (name, key), _unknown(key, known, target)


@functools.cache
def describe(scheme: str) -> Backend:
    """The options of the installed backend of `scheme` (imports it: no connection is made)."""
    fsspec = importlib.import_module("fsspec")
    filesystem = fsspec.get_filesystem_class(scheme)
    module = filesystem.__module__.split(".")[0]
    signature = inspect.signature(filesystem.__init__)
    defaults = {
        name: parameter.default
        for name, parameter in signature.parameters.items()
        if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY) and name != "self"
    }
    own = (frozenset(defaults) | FSSPEC_OPTIONS) - SHIPPER_OWNS
    if module == "s3fs":
        # s3fs hands its other options to aiobotocore's session (`profile`), client_kwargs to create_client(),
        # config_kwargs to botocore's Config (both raise on an unknown name, at the first upload), and
        # s3_additional_kwargs to every S3 request, dropping silently what no request takes (a misspelt
        # ServerSideEncryption uploaded unencrypted).
        session = importlib.import_module("aiobotocore.session").AioSession
        nested = {
            "client_kwargs": ("botocore's create_client()", _client_options),
            "config_kwargs": ("botocore's Config", _config_options),
            "s3_additional_kwargs": ("S3's requests", _s3_params),
        }
        return Backend(module, own | _named(session.__init__), defaults, nested)
    if module == "adlfs":
        # adlfs hands its other options to azure-identity's DefaultAzureCredential, which ignores what it does not
        # know: its documented keywords are the ones that do something (none read: names unchecked).
        documented = _keywords(importlib.import_module("azure.identity").DefaultAzureCredential.__doc__ or "")
        return Backend(module, own | documented if documented else None, defaults)
    # gcsfs hands its other options to fsspec's own (FSSPEC_OPTIONS), which ignores the rest.
    return Backend(module, own, defaults)


def _unknown(name: str, known: frozenset[str], of: str) -> str:
    """`unknown option of X (did you mean 'y'?; known: ...)`, the known names listed while they are few."""
    if len(known) <= MAX_LISTED:
        return f"unknown option of {of}" + did_you_mean(name, known)
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown option of {of} ({hint}{len(known)} known: see its documentation)"


def _named(function: Callable[..., Any]) -> frozenset[str]:
    """The parameters of `function` that can be given by name (not self, *args or **kwargs)."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return frozenset(
        name for name, parameter in inspect.signature(function).parameters.items()
        if parameter.kind in kinds and name != "self"
    )  # fmt: skip


def _client_options() -> frozenset[str]:
    """What s3fs's client_kwargs may hold: botocore's create_client() options, but the two s3fs sets itself."""
    session = importlib.import_module("botocore.session").Session
    return _named(session.create_client) - {"service_name", "config"}


def _config_options() -> frozenset[str]:
    """What s3fs's config_kwargs may hold: aiobotocore's AioConfig options and botocore's Config options."""
    config = importlib.import_module("botocore.config").Config
    aio_config = importlib.import_module("aiobotocore.config").AioConfig
    return _named(aio_config.__init__) | frozenset(config.OPTION_DEFAULTS)


def _s3_params() -> frozenset[str]:
    """What s3fs's s3_additional_kwargs may hold: the parameters of S3's requests, from botocore's service model
    (shipped with botocore: read from disk)."""
    model = importlib.import_module("botocore.session").get_session().get_service_model("s3")
    found: set[str] = set()
    for operation in model.operation_names:
        shape = model.operation_model(operation).input_shape
        if shape is not None:
            found.update(shape.members)
    return frozenset(found)


_KEYWORD = re.compile(r":keyword\s+(?:[^:\n]*\s)?(\w+):")


def _keywords(docstring: str) -> frozenset[str]:
    """The keyword arguments a Sphinx docstring documents (`:keyword str authority: ...`)."""
    return frozenset(_KEYWORD.findall(docstring))


def _http_url(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parts = urlsplit(value)
        return parts.scheme in {"http", "https"} and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port beyond 65535, an unclosed IPv6 bracket
        return False
