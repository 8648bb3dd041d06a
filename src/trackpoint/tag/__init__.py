"""tp.js, the JavaScript tag the tracker serves: the built file shipped in this package, its version and integrity
hash, the paths it is served on (the edge prebuilds their answers: `Edge.files`) and the config check of its paths.

The source is `tag/tp.js` at the repository's root; `scripts/build-tag` builds `tp.min.js` here, and keeps the
version it replaces in `released/` (every version since 1.0.0, as published): a page that pinned a version by its path
and integrity hash keeps loading the same bytes after the tracker is upgraded.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources

from trackpoint.config.model import Config, TagConfig

KeyPath = tuple[str | int, ...]

BUILT_FILE = "tp.min.js"
VERSION = "{version}"  # in server.tag.versioned_path
RELEASED = "released"  # the versions the build replaced, as tp-VERSION.min.js: each still served at its own path
CONTENT_TYPE = b"text/javascript; charset=utf-8"
# A versioned path names these bytes for good: caches may keep them for a year without asking again.
IMMUTABLE = b"public, max-age=31536000, immutable"
# The build writes `/*! tp.js VERSION ...` first: the version has one home, tag/package.json.
_BANNER = re.compile(rb"/\*! tp\.js ([0-9A-Za-z.+-]{1,32}) ")


@dataclass(frozen=True, slots=True)
class Tag:
    """The built tag as it is served."""

    content: bytes
    version: str

    @property
    def integrity(self) -> str:
        """The Subresource Integrity value of the file (`integrity="sha384-..."` on the script element)."""
        return "sha384-" + base64.b64encode(hashlib.sha384(self.content).digest()).decode("ascii")

    def versioned_path(self, config: TagConfig) -> str:
        return config.versioned_path.replace(VERSION, self.version)


def _tag_of(content: bytes, name: str) -> Tag:
    banner = _BANNER.match(content)
    if banner is None:
        raise ValueError(f"{name} has no `/*! tp.js VERSION` banner: rebuild it with scripts/build-tag")
    return Tag(content, banner.group(1).decode("ascii"))


@cache
def built_tag() -> Tag:
    """The built file, read once per process."""
    return _tag_of(resources.files(__package__).joinpath(BUILT_FILE).read_bytes(), BUILT_FILE)


@cache
def released_tags() -> tuple[Tag, ...]:
    """The earlier versions still served at their versioned paths, oldest first (not the current one)."""
    current = built_tag().version
    found = [
        _tag_of(entry.read_bytes(), f"{RELEASED}/{entry.name}")
        for entry in resources.files(__package__).joinpath(RELEASED).iterdir()
        if entry.name.startswith("tp-") and entry.name.endswith(".min.js")
    ]
    return tuple(sorted((tag for tag in found if tag.version != current), key=lambda tag: _version_key(tag.version)))


def _version_key(version: str) -> list[tuple[int, str]]:
    """1.10.0 after 1.9.0; a part that is not a number (`rc1`) before any that is, and never compared with one."""
    return [(int(part), "") if part.isdigit() else (-1, part) for part in re.split(r"[.+-]", version)]


def served_paths(config: TagConfig) -> list[tuple[str, bytes, str, bytes]]:
    """(path, Cache-Control, what it is, the file) of each path the tag is served on; none when it is off: the
    current tag, cached briefly, then each version at its own path, immutable (the current one, then the earlier,
    newest first)."""
    if not config.enabled:
        return []
    tag = built_tag()
    current = f"tag version {tag.version} (immutable; integrity `{tag.integrity}`)"
    served = [
        (
            config.path,
            b"public, max-age=%d" % config.max_age_s,
            "the current tag, cached briefly (`max_age_s`)",
            tag.content,
        ),
        (tag.versioned_path(config), IMMUTABLE, current, tag.content),
    ]
    for old in reversed(released_tags()):  # versioned_path has {version} (the config's pattern)
        what = f"tag version {old.version}, for pages that pinned it (immutable; integrity `{old.integrity}`)"
        served.append((old.versioned_path(config), IMMUTABLE, what, old.content))
    return served


def check_tag(config: Config) -> Iterator[tuple[KeyPath, str]]:
    """The tag's paths are its own: no event type may take them (run by `trackpoint config check` and every load)."""
    tag = config.server.tag
    if not tag.enabled:
        return
    where: KeyPath = ("server", "tag")
    # The options' order; each earlier version's path is the versioned path's too.
    paths = [("path", tag.path)] + [("versioned_path", t.versioned_path(tag)) for t in (built_tag(), *released_tags())]
    if tag.path in (path for _, path in paths[1:]):
        yield (*where, "versioned_path"), "the versioned path must differ from `path`"
    for type_name, spec in config.event_types.items():
        for option, path in paths:
            if path in spec.paths:
                yield (*where, option), f"{path} is taken by event type {type_name!r}: move the tag or the type"
