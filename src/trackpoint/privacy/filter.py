"""The collector-side privacy filter: the one place that decides what part of an event a collector receives.

Raw client IP and User-Agent go only to trusted collectors, and so do fields read from the IP, a cookie or a header
(unless the collector opts in by name); an untrusted collector gets the referer without its query string.
Per-collector allow and deny lists trim the rest.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

import msgspec

from trackpoint.config.model import CollectorBase, Config, EventTypeSpec
from trackpoint.event import Context, Event
from trackpoint.privacy.cookie import UID_DIM

SECTIONS = ("dims", "metrics", "ctx")
CONTEXT_MEMBERS = tuple(field.name for field in msgspec.structs.fields(Context))
# Never for an untrusted collector, whatever its lists say: even a truncated IP identifies a household.
RAW_CONTEXT = frozenset({"ip", "ua"})
# Field sources that carry the client's own data rather than the URL the ad server wrote.
PRIVATE_SOURCES = frozenset({"ip", "cookie", "header"})

Value = TypeVar("Value")


def path_problems(paths: Iterable[str]) -> Iterator[tuple[int, str]]:
    """(index, message) for each path that is not `dims`, `metrics`, `ctx` or `section.NAME` (ctx: its members)."""
    for i, path in enumerate(paths):
        section, dot, name = path.partition(".")
        if section not in SECTIONS or (dot and not name):
            yield i, f"not a field path: {path!r} (dims, metrics, ctx, dims.NAME, metrics.NAME or ctx.MEMBER)"
        elif section == "ctx" and dot and name not in CONTEXT_MEMBERS:
            yield i, f"ctx has no member {name!r} (known: {', '.join(CONTEXT_MEMBERS)})"


class _Section:
    """What one section keeps: `allow` None means every name not denied."""

    __slots__ = ("allow", "deny", "drop_all")

    def __init__(self, section: str, allow: list[str] | None, deny: list[str]) -> None:
        names_allowed = (
            None
            if allow is None or section in allow
            else {p[len(section) + 1 :] for p in allow if p.startswith(section + ".")}
        )
        self.drop_all = section in deny or names_allowed == set()
        self.allow = None if names_allowed is None else frozenset(names_allowed)
        self.deny = frozenset(p[len(section) + 1 :] for p in deny if p.startswith(section + "."))

    @property
    def passes_all(self) -> bool:
        return not self.drop_all and self.allow is None and not self.deny

    def keeps(self, name: str) -> bool:
        return not self.drop_all and (self.allow is None or name in self.allow) and name not in self.deny

    def apply(self, values: dict[str, Value]) -> dict[str, Value]:
        if self.drop_all:
            return {}
        allow, deny = self.allow, self.deny
        return {k: v for k, v in values.items() if (allow is None or k in allow) and k not in deny}


def private_fields(spec: EventTypeSpec) -> dict[str, str]:
    """An event type's fields read from the client IP, a cookie or a header: field name -> its path (`dims.x`)."""
    private = {name: f"{field.place}.{name}" for name, field in spec.fields.items() if field.source in PRIVATE_SOURCES}
    if spec.response.user_id_cookie is not None:
        private[UID_DIM] = f"dims.{UID_DIM}"
    return private


def preprocessor_private_dims(config: Config, spec: EventTypeSpec) -> dict[str, str]:
    """The private dims (`private_dims`, e.g. geo's `geo.city`) the event type's preprocessors add: name -> path."""
    private: dict[str, str] = {}
    for name in spec.preprocessors:
        preprocessor = config.preprocessors.get(name)
        if preprocessor is not None:
            private.update((dim, f"dims.{dim}") for dim in preprocessor.private_dims)
    return private


def deny_private_fields(config: Config) -> Config:
    """The config with each untrusted collector's fields_deny extended by the private fields of the event types
    that feed it (their own collectors or their invalid-traffic route), except those it names in send_private."""
    feeds: dict[str, dict[str, str]] = {}
    for spec in config.event_types.values():
        private = private_fields(spec) | preprocessor_private_dims(config, spec)
        if private:
            for name in {*spec.collectors, *spec.invalid_traffic.collectors}:
                feeds.setdefault(name, {}).update(private)
    collectors = dict(config.collectors)
    for name, private in feeds.items():
        collector = collectors.get(name)
        if collector is None or collector.trusted:
            continue
        denied = sorted(path for field, path in private.items() if field not in collector.send_private)
        extra = [path for path in denied if path not in collector.fields_deny]
        if extra:
            collectors[name] = msgspec.structs.replace(collector, fields_deny=[*collector.fields_deny, *extra])
    return msgspec.structs.replace(config, collectors=collectors)


def strip_query(referer: str) -> str:
    """A referer without its query string and fragment."""
    cut = min((at for at in (referer.find("?"), referer.find("#")) if at != -1), default=-1)
    return referer if cut == -1 else referer[:cut]


class PrivacyFilter:
    """Makes the copy of an event one collector may receive (the original, shared with other collectors, is kept)."""

    __slots__ = ("ctx_cleared", "ctx_kept", "dims", "metrics", "strip_referer")

    def __init__(self, trusted: bool, allow: list[str] | None, deny: list[str], referer_query: bool = False) -> None:
        self.dims = _Section("dims", allow, deny)
        self.metrics = _Section("metrics", allow, deny)
        ctx = _Section("ctx", allow, deny)
        self.ctx_kept = tuple(
            member for member in CONTEXT_MEMBERS if ctx.keeps(member) and (trusted or member not in RAW_CONTEXT)
        )
        self.ctx_cleared = {member: None for member in CONTEXT_MEMBERS if member not in self.ctx_kept}
        # Untrusted: the referer's query string stays behind unless the collector asks for it.
        self.strip_referer = "referer" in self.ctx_kept and not (trusted or referer_query)

    @property
    def passes_all(self) -> bool:
        return (
            self.dims.passes_all
            and self.metrics.passes_all
            and self.ctx_kept == CONTEXT_MEMBERS
            and not self.strip_referer
        )

    def __call__(self, event: Event) -> Event:
        ctx = msgspec.structs.replace(event.ctx, **self.ctx_cleared) if self.ctx_cleared else event.ctx
        if self.strip_referer and ctx.referer is not None:
            ctx = msgspec.structs.replace(ctx, referer=strip_query(ctx.referer))
        return msgspec.structs.replace(
            event,
            dims=event.dims if self.dims.passes_all else self.dims.apply(event.dims),
            metrics=event.metrics if self.metrics.passes_all else self.metrics.apply(event.metrics),
            ctx=ctx,
        )


def build_filter(config: CollectorBase) -> PrivacyFilter | None:
    """The filter of a collector, or None when it may receive every event whole (trusted, no lists)."""
    privacy_filter = PrivacyFilter(config.trusted, config.fields_allow, config.fields_deny, config.referer_query)
    return None if privacy_filter.passes_all else privacy_filter
