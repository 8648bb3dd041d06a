"""tp.js as the tracker serves it: the precomputed answers (ETag, 304, gzip, caching, CORS), the config check of its
paths, the documented size and integrity hash against the built file, and a real tracker serving it.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Any

import pytest

from trackpoint.config import ConfigError, load
from trackpoint.config.model import TagConfig
from trackpoint.edge.responses import StaticFile, accepts_gzip
from trackpoint.edge.runtime import Edge, tag_files
from trackpoint.http.responses import Clock
from trackpoint.plugins import registry
from trackpoint.tag import IMMUTABLE, built_tag, released_tags

ROOT = Path(__file__).resolve().parent.parent
TAG = built_tag()
VERSIONED = f"/tp/{TAG.version}/tp.js"
# Every path a page may have pinned: the current version's and each earlier one's.
PINNED = {VERSIONED.encode()} | {f"/tp/{old.version}/tp.js".encode() for old in released_tags()}
# Each earlier version's hash as it was published (docs/guides/cdp-web-tracking.md at 659bb13, 23e829f, 27c8208 and
# 2697c73): a page pinned it with this hash.
PUBLISHED = {
    "1.0.0": "sha384-/kWCNputy+8b+NO4gHlkv36RqD8Oz+j0/0XzDb+oEgMRAu7W5AGDIIjpQrxdGFz9",
    "1.1.0": "sha384-SaDM2umG6OB+jq6oTBrbvPa9NrCKvYuYfQN+kwiH84zl1875yG18e7X+Ay1w17jM",
    "1.2.0": "sha384-QqTsS/1IL/P2Qg1HWVQhVhsZmoIk/Z+nIBdB6XkWis66pMFPrZWQPyqec30+Lx5l",
    "1.3.0": "sha384-koVIm8As8i2mKvVV5xkHPLkY7pfix8V8+ip6tUA1bPeRbpIQxIMbOUJN5IqmQai1",
}


def _split(response: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    return status, {k.lower(): v for k, v in (line.split(": ", 1) for line in lines)}, body


@pytest.fixture
def files() -> dict[bytes, StaticFile]:
    served = tag_files(TagConfig(), Clock())
    for file in served.values():
        file.rebuild()
    return served


# --- the answers -----------------------------------------------------------------------------------------------------


def test_the_built_file_is_the_tag_with_its_version() -> None:
    package = json.loads((ROOT / "tag" / "package.json").read_text())
    assert TAG.version == package["version"]
    assert TAG.content.startswith(f"/*! tp.js {TAG.version} ".encode())
    assert b"sendBeacon" in TAG.content and b"__tcfapi" in TAG.content


def test_both_paths_answer_the_tag_with_their_caching(files: dict[bytes, StaticFile]) -> None:
    assert set(files) == {b"/tp.js"} | PINNED
    status, headers, body = _split(files[b"/tp.js"].render({}, True, False))
    assert status == "HTTP/1.1 200 OK"
    assert body == TAG.content
    assert int(headers["content-length"]) == len(TAG.content)
    assert headers["content-type"] == "text/javascript; charset=utf-8"
    assert headers["cache-control"] == "public, max-age=300"
    assert headers["access-control-allow-origin"] == "*"  # any page may check its integrity
    assert headers["cross-origin-resource-policy"] == "cross-origin"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["vary"] == "Accept-Encoding"
    assert headers["connection"] == "keep-alive"
    assert "content-encoding" not in headers
    _, versioned, body = _split(files[VERSIONED.encode()].render({}, False, False))
    assert versioned["cache-control"] == IMMUTABLE.decode() == "public, max-age=31536000, immutable"
    assert versioned["connection"] == "close"
    assert versioned["etag"] == headers["etag"]  # the same bytes
    assert body == TAG.content


def test_a_version_a_page_pinned_is_still_served_after_an_upgrade(files: dict[bytes, StaticFile]) -> None:
    """The build keeps each version it replaces (scripts/build-tag): its path answers its own bytes, for good."""
    earlier = {old.version: old for old in released_tags()}
    assert TAG.version not in earlier
    assert {version: old.integrity for version, old in earlier.items() if version in PUBLISHED} == PUBLISHED
    for old in earlier.values():
        _, headers, body = _split(files[f"/tp/{old.version}/tp.js".encode()].render({}, True, False))
        assert body == old.content and body.startswith(f"/*! tp.js {old.version} ".encode())
        assert headers["cache-control"] == IMMUTABLE.decode()


def test_gzip_when_accepted(files: dict[bytes, StaticFile]) -> None:
    served = files[b"/tp.js"]
    _, plain, _ = _split(served.render({}, True, False))
    _, headers, body = _split(served.render({b"accept-encoding": b"gzip, deflate, br"}, True, False))
    assert headers["content-encoding"] == "gzip"
    assert gzip.decompress(body) == TAG.content
    assert int(headers["content-length"]) == len(body) < len(TAG.content) / 1.5
    assert headers["etag"] != plain["etag"]  # another representation, another strong ETag
    _, refused, _ = _split(served.render({b"accept-encoding": b"gzip;q=0, deflate"}, True, False))
    assert "content-encoding" not in refused


@pytest.mark.parametrize(
    ("value", "takes"),
    [
        (None, False),
        (b"gzip", True),
        (b"GZIP", True),
        (b"deflate, gzip;q=0.5", True),
        (b"gzip;q=0", False),
        (b"gzip; q=0.0", False),
        (b"*", True),
        (b"*;q=0", False),
        (b"*, gzip;q=0", False),  # named beats the wildcard
        (b"br, identity", False),
        (b"gzip;q=x", False),
    ],
)
def test_accept_encoding(value: bytes | None, takes: bool) -> None:
    assert accepts_gzip(value) is takes


def test_if_none_match_gets_a_bodiless_304(files: dict[bytes, StaticFile]) -> None:
    served = files[VERSIONED.encode()]
    _, headers, _ = _split(served.render({}, True, False))
    etag = headers["etag"].encode()
    status, not_modified, body = _split(served.render({b"if-none-match": etag}, True, False))
    assert (status, body) == ("HTTP/1.1 304 Not Modified", b"")
    assert not_modified["etag"] == headers["etag"]
    assert not_modified["cache-control"] == headers["cache-control"]
    assert "content-type" not in not_modified
    # A 304's Content-Length may only be the length its 200 would have had (RFC 9110 §8.6).
    assert int(not_modified["content-length"]) == len(TAG.content)
    for listed in (b'"other", ' + etag, b"W/" + etag, b"*"):
        assert _split(served.render({b"if-none-match": listed}, True, False))[0] == "HTTP/1.1 304 Not Modified"
    assert _split(served.render({b"if-none-match": b'"other"'}, True, False))[0] == "HTTP/1.1 200 OK"
    # The gzip representation has its own ETag: a client holding the plain one gets the gzipped bytes.
    gzipped = {b"if-none-match": etag, b"accept-encoding": b"gzip"}
    assert _split(served.render(gzipped, True, False))[0] == "HTTP/1.1 200 OK"
    _, gz_headers, _ = _split(served.render({b"accept-encoding": b"gzip"}, True, False))
    gzipped[b"if-none-match"] = gz_headers["etag"].encode()
    assert _split(served.render(gzipped, True, False))[0] == "HTTP/1.1 304 Not Modified"


def test_head_has_the_headers_and_no_body(files: dict[bytes, StaticFile]) -> None:
    status, headers, body = _split(files[b"/tp.js"].render({}, True, True))
    assert (status, body) == ("HTTP/1.1 200 OK", b"")
    assert int(headers["content-length"]) == len(TAG.content)


def test_the_date_follows_the_clock() -> None:
    clock = Clock()
    served = tag_files(TagConfig(), clock)[b"/tp.js"]
    served.rebuild()
    clock.date_line = b"Date: Thu, 01 Jan 2026 00:00:00 GMT\r\n"
    served.rebuild()
    assert _split(served.render({}, True, False))[1]["date"] == "Thu, 01 Jan 2026 00:00:00 GMT"


# --- configuration -------------------------------------------------------------------------------------------------


def test_disabled_or_moved(tmp_path: Path) -> None:
    assert tag_files(TagConfig(enabled=False), Clock()) == {}
    moved = tag_files(TagConfig(path="/assets/t.js", versioned_path="/assets/t-{version}.js"), Clock())
    versions = [TAG.version, *(old.version for old in released_tags())]  # each version moves with the template
    assert set(moved) == {b"/assets/t.js", *(f"/assets/t-{version}.js".encode() for version in versions)}
    path = tmp_path / "off.yaml"
    path.write_text(json.dumps({"data_dir": str(tmp_path / "data"), "server": {"tag": {"enabled": False}}}))
    edge = Edge(load(path, registry=registry()).config, "test", 0, registry())
    assert edge.files == {}
    assert b"accept-encoding" not in edge.kept_headers  # nothing kept for a tag that is not served


def test_the_default_serves_the_tag(tmp_path: Path) -> None:
    path = tmp_path / "default.yaml"
    path.write_text(json.dumps({"data_dir": str(tmp_path / "data")}))
    edge = Edge(load(path, registry=registry()).config, "test", 0, registry())
    assert set(edge.files) == {b"/tp.js"} | PINNED
    assert {b"accept-encoding", b"if-none-match"} <= edge.kept_headers


@pytest.mark.parametrize(
    ("tag", "message"),
    [
        ({"path": "/i"}, "/i is taken by event type 'impression'"),
        ({"versioned_path": "/c{version}"}, None),  # `/c1.0.0`: not an event type's path
        ({"path": "/tp/{version}/tp.js"}, "Expected `str` matching regex"),  # braces are not a path
        ({"versioned_path": "/tp/tp.js"}, "Expected `str` matching regex"),  # no {version}
        ({"path": "tp.js"}, "Expected `str` matching regex"),
    ],
)
def test_tag_paths_are_checked(tmp_path: Path, tag: dict[str, Any], message: str | None) -> None:
    path = tmp_path / "tag.yaml"
    path.write_text(json.dumps({"data_dir": str(tmp_path / "data"), "server": {"tag": tag}}))
    if message is None:
        load(path, registry=registry())
        return
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(path, registry=registry())


def test_an_event_type_on_the_versioned_path_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "clash.yaml"
    clash = {"paths": [VERSIONED], "methods": ["GET"], "response": {"kind": "no_content"}}
    path.write_text(json.dumps({"data_dir": str(tmp_path / "data"), "event_types": {"js": clash}}))
    with pytest.raises(ConfigError, match=re.escape(f"{VERSIONED} is taken by event type 'js'")):
        load(path, registry=registry())


# --- the documented facts ------------------------------------------------------------------------------------------


def test_the_guide_states_the_built_files_size_and_integrity() -> None:
    guide = (ROOT / "docs" / "guides" / "cdp-web-tracking.md").read_text()
    gzipped = len(gzip.compress(TAG.content, compresslevel=9, mtime=0))
    assert gzipped < 3 * 1024  # the budget: under 3 KB gzipped
    assert f"| `{TAG.version}` | {len(TAG.content):,} | {gzipped:,} | `{TAG.integrity}` |" in guide, (
        "docs/guides/cdp-web-tracking.md must state this build's version, size, gzipped size and integrity "
        f"(scripts/build-tag prints them): | `{TAG.version}` | {len(TAG.content):,} | {gzipped:,} | `{TAG.integrity}` |"
    )
    assert f'integrity="{TAG.integrity}"' in guide  # the pinned snippet


# --- a real tracker ------------------------------------------------------------------------------------------------


def test_a_tracker_serves_the_tag(tracker: Any) -> None:
    status, headers, body = tracker.get("/tp.js")
    assert (status, body) == (200, TAG.content)
    status, headers, body = tracker.get(VERSIONED + "?cache=bust", {"Accept-Encoding": "gzip"})
    assert (status, headers["content-encoding"], headers["cache-control"]) == (200, "gzip", IMMUTABLE.decode())
    assert gzip.decompress(body) == TAG.content
    status, _, body = tracker.get(VERSIONED, {"Accept-Encoding": "gzip", "If-None-Match": headers["etag"]})
    assert (status, body) == (304, b"")
    status, headers, _ = tracker.request("POST", "/tp.js", b"x")
    assert (status, headers["x-reject-reason"]) == (405, "method_not_allowed")
    for version in PUBLISHED:  # the earlier versions, for the pages that pinned them
        status, _, body = tracker.get(f"/tp/{version}/tp.js")
        assert (status, body.startswith(f"/*! tp.js {version} ".encode())) == (200, True)
    status, headers, _ = tracker.get("/tp/0.0.1/tp.js")  # a version never released
    assert (status, headers["x-reject-reason"]) == (404, "not_found")
    assert tracker.events() == []  # serving the tag records nothing
