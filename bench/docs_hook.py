"""MkDocs hook (mkdocs.yml `hooks:`): publishes the benchmark charts of bench/results/ as files of the docs site.

The charts are committed once, beside the results they plot; the site takes them from here at build time, so
docs/benchmarks.md always shows the latest recorded run and no chart is ever copied into docs/.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

RESULTS = Path(__file__).resolve().parent / "results"
# Where the charts appear in the site; pages link them as e.g. `assets/bench/latest.png` (relative to docs/).
SITE_FOLDER = "assets/bench"


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Adds every recorded chart; a page linking a chart that no run has recorded fails the strict build."""
    for chart in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"{SITE_FOLDER}/{chart.name}", abs_src_path=str(chart)))
    return files
