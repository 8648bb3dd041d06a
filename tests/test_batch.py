"""Batch endpoints (issue 15): many events per POST, in the payload shapes SDKs send; each item its own event, the
refused ones listed, the accepted ones recorded before the answer, bodies compressed or not, within their caps."""

from __future__ import annotations

import gzip
import json
import re
import zlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from openapi_spec_validator import validate

from conftest import Tracker
from trackpoint.config.load import ConfigError, load
from trackpoint.plugins import registry
from trackpoint.reference.openapi import openapi_document

TRACK = {
    "paths": ["/t"],
    "methods": ["GET", "POST"],
    "fields": {
        "event": {"required": True, "max_len": 64},
        "user": {"max_len": 64},
        "msg": {"max_len": 64},
        "value": {"type": "money", "min": 0, "max": 1_000_000},
    },
    "dedupe_key": ["msg"],
    "response": {"kind": "json"},
    "collectors": ["log"],
    "batch": {"paths": ["/t/batch", "/matomo.php"], "max_items": 150},
}
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def batching(tracker_factory: Any) -> Tracker:
    tracker: Tracker = tracker_factory(
        {"event_types": {"track": TRACK}, "server": {"limits": {"max_body_bytes": 1 << 20}}}
    )
    return tracker


def _post(tracker: Tracker, path: str, document: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """The status and the answer: the JSON document of a batch answered 200, else the headers (with the reason)."""
    body = document if isinstance(document, bytes) else json.dumps(document).encode()
    status, reply_headers, answer = tracker.request("POST", path, body, {**JSON, **(headers or {})})
    return status, json.loads(answer) if status == 200 else reply_headers


GUIDE = Path(__file__).resolve().parent.parent / "docs" / "guides" / "batches.md"
# Each documented payload shape, with two items.
SHAPES = {
    "posthog": [{"event": "pageview", "user": "u1"}, {"event": "click", "user": "u1"}],
    "snowplow": {
        "schema": "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4",
        "data": [{"event": "pv", "user": "u2"}, {"event": "se", "user": "u2"}],
    },
    "segment": {"batch": [{"event": "Order Completed", "value": 49.9}, {"event": "Signed Up"}], "sentAt": "x"},
    "matomo": {"requests": ["?event=visit&user=u4", "?event=goal&user=u4&value=3"]},
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_each_documented_payload_shape(batching: Tracker, shape: str) -> None:
    path = "/matomo.php" if shape == "matomo" else "/t/batch"
    assert _post(batching, path, SHAPES[shape]) == (200, {"accepted": 2, "refused": []})
    events = batching.wait_events(2)
    assert len(events) == 2 and len({e.id for e in events}) == 2  # each item its own event, its own id
    if shape == "segment":
        assert sorted(e.metrics.get("value", 0) for e in events) == [0, 49_900_000]
    if shape == "matomo":
        assert {e.dims["event"] for e in events} == {"visit", "goal"} and {e.dims["user"] for e in events} == {"u4"}


def test_every_example_of_the_guide(batching: Tracker) -> None:
    examples = re.findall(r"```json\n(.*?)```", GUIDE.read_text(), re.S)
    shapes = [json.loads(text) for text in examples if "accepted" not in text]
    assert len(shapes) == 4  # array, data, batch, requests
    for document in shapes:
        assert _post(batching, "/t/batch", document) == (200, {"accepted": 2, "refused": []}), document
    assert len({e.id for e in batching.wait_events(8)}) == 8


def test_refused_items_are_listed_and_the_others_recorded(batching: Tracker) -> None:
    items: list[Any] = [
        {"event": "ok-1", "msg": "m1"},
        {"user": "no event"},
        {"event": "ok-2", "value": -5},
        "not an object",
        {"event": "ok-3", "msg": "m3"},
    ]
    status, answer = _post(batching, "/t/batch", items)
    assert status == 200
    assert answer == {
        "accepted": 2,
        "refused": [
            {"index": 1, "error": "missing_field", "field": "event"},
            {"index": 2, "error": "field_out_of_range", "field": "value"},
            {"index": 3, "error": "invalid_json"},
        ],
    }
    events = batching.wait_events(2)
    assert sorted(e.dims["event"] for e in events) == ["ok-1", "ok-3"]
    # The same batch again: the keyed items keep their ids (idempotent retries).
    _post(batching, "/t/batch", items)
    again = batching.wait_events(4)
    assert {e.id for e in again} == {e.id for e in events}


def test_compressed_batches_and_their_caps(batching: Tracker) -> None:
    items = [{"event": f"e{i}", "msg": f"z{i}"} for i in range(100)]
    body = json.dumps(items).encode()
    assert _post(batching, "/t/batch", gzip.compress(body), {"Content-Encoding": "gzip"})[1]["accepted"] == 100
    assert _post(batching, "/t/batch", zlib.compress(body), {"Content-Encoding": "deflate"})[1]["accepted"] == 100
    assert len({e.id for e in batching.wait_events(200)}) == 100  # keyed by msg: the deflate copy has the same ids
    too_many = json.dumps([{"event": "x"}] * 151).encode()
    status, headers = _post(batching, "/t/batch", too_many)
    assert (status, headers["x-reject-reason"]) == (413, "batch_too_large")
    bomb = gzip.compress(b"[" + b" " * (50 << 20) + b"]", 9)
    status, headers = _post(batching, "/t/batch", bomb, {"Content-Encoding": "gzip"})
    assert (status, headers["x-reject-reason"]) == (413, "inflation_ratio_exceeded")
    status, headers = _post(batching, "/t/batch", b'{"other": []}')
    assert (status, headers["x-reject-reason"]) == (400, "invalid_json")
    status, headers, _ = batching.request("GET", "/t/batch")
    assert (status, headers["allow"]) == (405, "POST")


def test_a_batch_path_answers_the_preflight_of_its_event_types_cors(tracker_factory: Any) -> None:
    """A browser's batch is JSON, often gzipped: a cross-origin one is preflighted, and the batch path answers it,
    allowing POST even where the event type's own paths take GET only (a pixel's)."""
    shop = "https://shop.example.com"
    cors = {"allow_origins": [shop], "allow_headers": ["content-type", "content-encoding"]}
    tracker: Tracker = tracker_factory(
        {"event_types": {"track": {**TRACK, "methods": ["GET"], "response": {"kind": "json", "cors": cors}}}}
    )
    preflight = {"Origin": shop, "Access-Control-Request-Method": "POST"}
    status, headers, body = tracker.request("OPTIONS", "/t/batch", headers=preflight)
    assert (status, body) == (204, b"")
    assert headers["access-control-allow-origin"] == shop
    assert headers["access-control-allow-methods"] == "POST"
    assert headers["access-control-allow-headers"] == "content-type, content-encoding"
    status, headers, _ = tracker.request("OPTIONS", "/t/batch", headers={**preflight, "Origin": "https://evil.test"})
    assert (status, headers["x-reject-reason"]) == (403, "cors_origin_not_allowed")
    status, headers, _ = tracker.request("OPTIONS", "/t/batch")  # not a preflight
    assert (status, headers["allow"]) == (405, "POST, OPTIONS")
    status, reply_headers, answer = tracker.request(
        "POST", "/t/batch", gzip.compress(b'[{"event": "pv"}]'), {**JSON, "Origin": shop, "Content-Encoding": "gzip"}
    )
    assert (status, json.loads(answer)) == (200, {"accepted": 1, "refused": []})
    assert reply_headers["access-control-allow-origin"] == shop
    assert tracker.wait_events(1)[0].dims["event"] == "pv"


@pytest.mark.parametrize(
    ("batch_paths", "message"),
    [(["/t"], "/t is already taken"), (["t/batch"], "a path starts with /"), (["/b", "/b"], "/b is already taken")],
)
def test_a_batch_path_is_a_path_of_its_own(tmp_path: Path, batch_paths: list[str], message: str) -> None:
    document = {"event_types": {"track": {**TRACK, "batch": {"paths": batch_paths}}}}
    config = tmp_path / "trackpoint.yaml"
    config.write_text(yaml.safe_dump(document))
    with pytest.raises(ConfigError, match=message):
        load(config, registry=registry())


def test_the_openapi_document_describes_batch_paths(tmp_path: Path) -> None:
    config = tmp_path / "trackpoint.yaml"
    config.write_text(yaml.safe_dump({"event_types": {"track": TRACK}}))
    document = openapi_document(load(config, registry=registry()), registry())
    validate(document)
    operation = document["paths"]["/t/batch"]["post"]
    shapes = operation["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
    assert shapes[0]["maxItems"] == 150 and {"data", "batch", "requests"} <= {
        key for shape in shapes[1:] for key in shape["required"]
    }
    assert "413" in operation["responses"] and "/matomo.php" in document["paths"]
