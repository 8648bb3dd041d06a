"""Preprocessors: plain objects built once from config and called in order on every event of their types.

A preprocessor takes the built event and returns it (changed in place or replaced), or None to drop it (counted).
Each one lives in a folder of its own, `preprocessors/<name>/` (config.py, preprocessor.py, its checks), and is
registered by a plugin (`trackpoint.plugins.PreprocessorKind`); the built-ins by `trackpoint.plugins.builtin`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import msgspec

from trackpoint.config.model import Config, EventTypeSpec, FieldSpec
from trackpoint.config.private import UID_DIM, deny_private_fields
from trackpoint.event import Event
from trackpoint.privacy.cookie import uid_field


class Preprocessor(Protocol):
    """The contract: a name for counters and one call per event.

    A preprocessor may also have any of the optional members the edge reads once when a worker builds its routes,
    each described by its own protocol: `input_fields` (`InputFields`), `counts` (`CountsOutcomes`),
    `redirect_params` (`RedirectParams`), `use_signing_keys` (`UsesSigningKeys`), `flag_dim` (`FlagsTraffic`),
    `cookie_veto` (`VetoesCookie`) and `refresh` (`Refreshes`).
    """

    name: str

    def __call__(self, event: Event, /) -> Event | None:
        """Called once per event on the request path: return the event (changed in place or replaced), None to
        drop it (counted), or raise `Reject` to refuse the request with a 4xx and a reason code. What it returns
        must be exactly an `Event` whose fields keep their declared types (dims: str values; metrics: int or finite
        float; ctx a Context, meta a Meta): anything else is a failure, as an exception is (the event is dropped,
        counted under `preprocessor_errors`); the edge checks what a third party's preprocessor returns."""
        ...


@runtime_checkable
class InputFields(Protocol):
    """Optional: fields the preprocessor reads that the event type need not declare (e.g. the consent signals). The
    edge adds them to each event type the preprocessor serves; fields the type declares itself win. Those read from
    the client (`source: ip|cookie|header`) are private like declared ones: untrusted collectors and the dashboard
    do not get them unless a collector's `send_private` names them."""

    input_fields: Mapping[str, FieldSpec]


@runtime_checkable
class CountsOutcomes(Protocol):
    """Optional: outcome counters (outcome -> count) the preprocessor increments, reported on /metrics as
    `trackpoint_preprocessor_outcomes_total{preprocessor, outcome}`."""

    counts: dict[str, int]


@runtime_checkable
class RedirectParams(Protocol):
    """Optional: (query parameter, dim) pairs a redirect response appends to its destination from the event's dims,
    e.g. the click id issued by `issue_click_id`."""

    redirect_params: tuple[tuple[str, str], ...]


@runtime_checkable
class UsesSigningKeys(Protocol):
    """Optional: called once per worker, before the first event, with the `signing` keys (key id -> secret) and
    the id of the key to sign with."""

    def use_signing_keys(self, keys: Mapping[str, bytes], sign_with: str) -> None:
        """Receives the signing keys (key id -> secret) and the id of the key new signatures use."""
        ...


@runtime_checkable
class FlagsTraffic(Protocol):
    """Optional: the dim in which the preprocessor flags invalid traffic; the event type's `invalid_traffic` policy
    routes (or drops) the events that carry it."""

    flag_dim: str


@runtime_checkable
class VetoesCookie(Protocol):
    """Optional: (dim, value): an event whose dims[dim] is value gets no user id cookie (e.g. denied consent)."""

    cookie_veto: tuple[str, str]


@runtime_checkable
class Refreshes(Protocol):
    """Optional: called by the worker's timer about once a second, off the request path, for upkeep such as
    reopening a changed database file (geo). It must return quickly; what it raises is logged, never fatal."""

    def refresh(self) -> None:
        """Does the periodic upkeep (the preprocessor decides how often real work is due)."""
        ...


def built_in(preprocessor: Preprocessor) -> bool:
    """Whether a preprocessor is one of trackpoint's own, whose results the tests hold to the contract: the edge
    checks only what the others return (`trackpoint.event.malformed`), which costs a copy of the event."""
    return type(preprocessor).__module__.startswith("trackpoint.")


def with_input_fields(spec: EventTypeSpec, preprocessors: tuple[Preprocessor, ...]) -> EventTypeSpec:
    """The event type with the fields its preprocessors read (a preprocessor's optional `input_fields`, e.g. the
    consent signals) and the user id cookie its response sets; fields the type declares itself win."""
    extra = {name: field for p in preprocessors if isinstance(p, InputFields) for name, field in p.input_fields.items()}
    if spec.response.user_id_cookie is not None:
        extra[UID_DIM] = uid_field(spec.response.user_id_cookie)
    return msgspec.structs.replace(spec, fields=extra | spec.fields) if extra else spec


def with_preprocessor_inputs(config: Config, preprocessors: Mapping[str, Preprocessor]) -> Config:
    """The config as a worker runs it, given the built preprocessors of its event types: each type with the fields
    they read (`with_input_fields`), and those of them read from the client added to untrusted collectors'
    fields_deny like declared ones (config/private.py), a plugin's preprocessor held to the rule as a built-in is."""
    event_types = {
        name: with_input_fields(spec, tuple(preprocessors[p] for p in spec.preprocessors))
        for name, spec in config.event_types.items()
    }
    return deny_private_fields(msgspec.structs.replace(config, event_types=event_types))
