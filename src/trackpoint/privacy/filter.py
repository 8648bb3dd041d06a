"""The collector-side privacy filter: the one place that decides what part of an event a collector receives.

Raw client IP and User-Agent go only to trusted collectors, and so do fields read from the IP, a cookie or a header
(unless the collector opts in by name); an untrusted collector gets the referer and `url` fields without their query
string. Per-collector allow and deny lists trim the rest.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Final, TypeVar

import msgspec

from trackpoint.config.model import CollectorBase
from trackpoint.event import Context, Event

SECTIONS: Final[tuple[str, ...]] = ("dims", "metrics", "ctx")
CONTEXT_MEMBERS: Final[tuple[str, ...]] = tuple(field.name for field in msgspec.structs.fields(Context))


def _check_members(kind: type[msgspec.Struct], members: tuple[str, ...]) -> None:
    """PrivacyFilter.__call__ builds the copy's Context and Event positionally (a third of the cost of
    msgspec.structs.replace with keywords): a member added to either must be added there too."""
    found = tuple(field.name for field in msgspec.structs.fields(kind))
    if found != members:  # pragma: no cover - a change of Context's or Event's members
        raise ImportError(f"PrivacyFilter builds {kind.__name__} from {members}, not from its members {found}")


_check_members(Context, ("ip", "ua", "referer", "device"))
_check_members(Event, ("id", "type", "ts", "dims", "metrics", "ctx", "meta"))
# Never for an untrusted collector, whatever its lists say: even a truncated IP identifies a household.
RAW_CONTEXT: Final = frozenset({"ip", "ua"})

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
        """What the section keeps, always in a dict of its own (never `values` itself)."""
        if self.drop_all or not values:
            return {}
        allow, deny = self.allow, self.deny
        if allow is not None:
            return {k: v for k, v in values.items() if k in allow and k not in deny}
        kept = dict(values)  # a copy and a few look-ups cost half of a comprehension
        if not deny.isdisjoint(kept):
            for name in deny:
                kept.pop(name, None)
        return kept


def clean_referer(referer: str, keep_query: bool = False) -> str:
    """A referer (or any URL) as an untrusted collector gets it: without its user info (`user:password@`, which
    browsers never send but apps setting the header by hand may), and without its query string and fragment unless
    `keep_query`."""
    if not keep_query:
        referer = referer.partition("#")[0].partition("?")[0]
    if "@" not in referer:  # the usual URL: no user info (and with keep_query, no e-mail address in the query)
        return referer
    scheme, slashes, rest = referer.partition("//")
    if slashes:
        host_end = min((at for at in (rest.find("/"), rest.find("?"), rest.find("#")) if at != -1), default=len(rest))
        at = rest.rfind("@", 0, host_end)
        if at != -1:
            referer = scheme + slashes + rest[at + 1 :]
    return referer


class PrivacyFilter:
    """Makes the copy of an event one collector may receive. The copy's dims, metrics and ctx are its own: another
    collector's send() that changes its events (or its copy) cannot change what this one gets. (ctx.device and meta
    are immutable and shared.)"""

    __slots__ = (
        "ctx_kept",
        "dims",
        "keep_device",
        "keep_ip",
        "keep_referer",
        "keep_ua",
        "metrics",
        "referer_query",
        "strip_referer",
        "trim_url",
    )

    def __init__(
        self,
        trusted: bool,
        allow: list[str] | None,
        deny: list[str],
        referer_query: bool = False,
        trim_url: Sequence[str] = (),
    ) -> None:
        self.dims = _Section("dims", allow, deny)
        self.metrics = _Section("metrics", allow, deny)
        ctx = _Section("ctx", allow, deny)
        self.ctx_kept = tuple(
            member for member in CONTEXT_MEMBERS if ctx.keeps(member) and (trusted or member not in RAW_CONTEXT)
        )
        self.keep_ip, self.keep_ua, self.keep_referer, self.keep_device = (m in self.ctx_kept for m in CONTEXT_MEMBERS)
        # Untrusted: the referer's user info stays behind, and its query string unless the collector asks for it.
        self.strip_referer = "referer" in self.ctx_kept and not trusted
        self.referer_query = referer_query
        # The dims holding URLs (`type: url` fields) sent as scheme, host and path (fields_trim_url).
        named = (path.removeprefix("dims.") for path in trim_url if path.startswith("dims."))
        self.trim_url = tuple(name for name in named if self.dims.keeps(name))

    @property
    def passes_all(self) -> bool:
        return (
            self.dims.passes_all
            and self.metrics.passes_all
            and self.ctx_kept == CONTEXT_MEMBERS
            and not self.strip_referer
            and not self.trim_url
        )

    def __call__(self, event: Event) -> Event:
        # Positional constructors, no keyword replace: this runs once per event and untrusted collector.
        ctx = event.ctx
        referer = ctx.referer if self.keep_referer else None
        if referer is not None and self.strip_referer:
            referer = clean_referer(referer, self.referer_query)
        ctx = Context(
            ctx.ip if self.keep_ip else None,
            ctx.ua if self.keep_ua else None,
            referer,
            ctx.device if self.keep_device else None,
        )
        dims = self.dims.apply(event.dims)
        for name in self.trim_url:
            url = dims.get(name)
            if url is not None:
                dims[name] = clean_referer(url)
        return Event(event.id, event.type, event.ts, dims, self.metrics.apply(event.metrics), ctx, event.meta)


def build_filter(config: CollectorBase) -> PrivacyFilter | None:
    """The filter of a collector, or None when it may receive every event whole (trusted, no lists)."""
    privacy_filter = PrivacyFilter(
        config.trusted, config.fields_allow, config.fields_deny, config.referer_query, config.fields_trim_url
    )
    return None if privacy_filter.passes_all else privacy_filter
