"""vast: the per-event rules of VAST video tracking: how far playback went (metrics.watch_ms), which events may
repeat within one impression and what tells their ids apart. The protocol facts live in trackpoint.adtech.vast.
"""

from __future__ import annotations

from collections.abc import Iterator

from trackpoint.adtech import vast
from trackpoint.config.load import KeyPath
from trackpoint.config.model import INVALID_DIM, Config, FieldSpec
from trackpoint.event import Event, derived_id
from trackpoint.fields.converters import Reject
from trackpoint.preprocessors.vast.config import VastConfig

WATCH_METRIC = "watch_ms"

# What separates two events of the same name within one impression (the rest of the id is the type's dedupe key).
_ONCE, _PER_OFFSET, _PER_CODE, _PER_INTERACTION = range(4)
_KEYING = {name: _PER_INTERACTION for name in vast.REPEATABLE} | {vast.PROGRESS: _PER_OFFSET, vast.ERROR: _PER_CODE}


class Vast:
    """Adds metrics.watch_ms, refuses a progress event without its offset, and re-keys the ids of events that may
    happen more than once per impression."""

    def __init__(self, name: str, config: VastConfig) -> None:
        self.name = name
        self.event_field = config.event_field
        self.offset_field = config.offset_field
        self.duration_field = config.duration_field
        self.error_code_field = config.error_code_field
        self.cachebuster_field = config.cachebuster_field
        self.progress_bucket_ms = max(1, round(config.progress_granularity_s * 1000))
        self.input_fields = input_fields(config)

    def __call__(self, event: Event) -> Event:
        dims = event.dims
        metrics = event.metrics
        name = dims.get(self.event_field)
        if name is None:
            return event
        offset = metrics.get(self.offset_field)
        cachebuster = dims.pop(self.cachebuster_field, None)  # a nonce: it keys the id below, it is not data
        watched = vast.watch_ms(name, offset, metrics.get(self.duration_field))
        if watched is not None:
            metrics[WATCH_METRIC] = watched
        keying = _KEYING.get(name, _ONCE)
        if keying == _ONCE:
            return event
        if keying == _PER_OFFSET:
            if offset is None:  # refused with the reason its value was dropped for, if it was
                raise Reject(400, _dropped_reason(dims, self.offset_field) or "missing_field", self.offset_field)
            bucket = self.progress_bucket_ms
            extra: str | None = str(round(offset * 1000) // bucket * bucket)
        elif keying == _PER_CODE:
            extra = dims.get(self.error_code_field)
        elif cachebuster is not None:  # an interaction: the cache buster tells a second pause from a retried request
            extra = cachebuster
        else:
            extra = None if offset is None else str(round(offset * 1000))
        if extra is not None:
            event.id = derived_id(event.type, [event.id, extra])
        return event


def _dropped_reason(dims: dict[str, str], field: str) -> str | None:
    """Why the builder dropped `field` (`on_invalid: drop`, named in dims.invalid), if it did."""
    for entry in dims.get(INVALID_DIM, "").split(","):
        name, _, reason = entry.partition(":")
        if name == field:
            return reason
    return None


def input_fields(config: VastConfig) -> dict[str, FieldSpec]:
    """The fields the preprocessor reads, as the default `video` type declares them; a type's own declarations win."""
    return {
        config.event_field: FieldSpec(type="enum", required=True, values=list(vast.EVENTS)),
        config.offset_field: FieldSpec(type="duration", min=0, max=86_400, max_len=24, unexpanded_macros="absent"),
        config.duration_field: FieldSpec(type="duration", min=0, max=86_400, max_len=24, unexpanded_macros="absent"),
        config.error_code_field: FieldSpec(
            type="int",
            min=vast.ERROR_CODE_MIN,
            max=vast.ERROR_CODE_MAX,
            max_len=16,
            into="dims",
            unexpanded_macros="absent",
        ),
        config.cachebuster_field: FieldSpec(max_len=32, unexpanded_macros="absent"),
    }


def check_vast(config: Config) -> Iterator[tuple[KeyPath, str]]:
    """Config rules of vast: the event types using it declare its fields where it looks for them (the event name
    and the error code in dims, the offset and the duration as numbers in metrics)."""
    users = {name: p for name, p in config.preprocessors.items() if isinstance(p, VastConfig)}
    numeric = ("int", "decimal", "duration")
    for type_name, spec in config.event_types.items():
        for name in spec.preprocessors:
            user = users.get(name)
            if user is None:
                continue
            expected = {
                user.event_field: ("dims", ("enum", "string"), "an enum or a string"),
                user.error_code_field: ("dims", ("int", "string"), "an int (into: dims) or a string"),
                user.cachebuster_field: ("dims", ("string", "int"), "a string"),
                user.offset_field: ("metrics", numeric, "a duration"),
                user.duration_field: ("metrics", numeric, "a duration"),
            }
            for field_name, (place, types, what) in expected.items():
                declared = spec.fields.get(field_name)
                if declared is None:
                    continue  # added by the preprocessor with the right declaration
                if declared.type not in types or declared.place != place:
                    yield (
                        ("event_types", type_name, "fields", field_name),
                        f"preprocessor {name!r} reads {field_name!r} from {place}: declare it {what}",
                    )
