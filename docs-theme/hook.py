"""MkDocs hook (mkdocs.yml `hooks:`): the version of trackpoint the site is built from, for the header
(docs-theme/partials/source.html), read from the package so it cannot drift from a release."""

from __future__ import annotations

from mkdocs.config.defaults import MkDocsConfig

from trackpoint import __version__


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    config.extra["version"] = __version__
    return config
