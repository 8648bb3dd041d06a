"""tp.js, the JavaScript tag the tracker serves: the built file shipped in this package, its version and integrity
hash, the paths it is served on (the edge prebuilds their answers: `Edge.files`) and the config check of its paths.

The source is `tag/tp.js` at the repository's root; `scripts/build-tag` builds `tp.min.js` here.
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
        return config.versioned_path.replace("{version}", self.version)


@cache
def built_tag() -> Tag:
    """The built file, read once per process."""
    content = resources.files(__package__).joinpath(BUILT_FILE).read_bytes()
    banner = _BANNER.match(content)
    if banner is None:
        raise ValueError(f"{BUILT_FILE} has no `/*! tp.js VERSION` banner: rebuild it with scripts/build-tag")
    return Tag(content, banner.group(1).decode("ascii"))


def served_paths(config: TagConfig) -> list[tuple[str, bytes, str]]:
    """(path, Cache-Control, what it is) of each path the tag is served on; none when it is off."""
    if not config.enabled:
        return []
    tag = built_tag()
    return [
        (config.path, b"public, max-age=%d" % config.max_age_s, "the current tag, cached briefly (`max_age_s`)"),
        (tag.versioned_path(config), IMMUTABLE, f"tag version {tag.version} (immutable; integrity `{tag.integrity}`)"),
    ]


def check_tag(config: Config) -> Iterator[tuple[KeyPath, str]]:
    """The tag's paths are its own: no event type may take them (run by `trackpoint config check` and every load)."""
    tag = config.server.tag
    if not tag.enabled:
        return
    where: KeyPath = ("server", "tag")
    paths = {"path": tag.path, "versioned_path": built_tag().versioned_path(tag)}  # the options' order
    if paths["path"] == paths["versioned_path"]:
        yield (*where, "versioned_path"), "the versioned path must differ from `path`"
    for type_name, spec in config.event_types.items():
        for option, path in paths.items():
            if path in spec.paths:
                yield (*where, option), f"{path} is taken by event type {type_name!r}: move the tag or the type"
