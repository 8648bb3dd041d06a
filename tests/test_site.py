"""The documentation site builds with every warning as an error, and what it shows holds: every trackpoint config in
its pages loads, and the README's links into it resolve.

Which YAML is a config: every ```yaml block of docs/ (outside the generated docs/reference/, inside content tabs
too) whose top level names a section of the configuration (data_dir, server, collectors, ...) is a whole config
file and must pass `trackpoint.config.load`, the tracker's own loader. Other YAML (a Compose file, a Kubernetes
manifest) names none of those sections and is left alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import yaml

from conftest import load_config, write_mmdb
from trackpoint.config import ConfigError
from trackpoint.config.load import default_text
from trackpoint.config.model import Config
from trackpoint.preprocessors.geo.config import DEFAULT_DATABASE

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
GENERATED = DOCS / "reference"
CHARTS = ROOT / "bench" / "results"
CONFIG_SECTIONS = frozenset(field.encode_name for field in msgspec.structs.fields(Config))

# An opening fence (any indent: blocks in tabs and admonitions are indented), its info string starting with yaml.
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})yaml\b")
README_DOCS_LINK = re.compile(r"\]\((?P<target>docs/[^)\s#]+)(?:#(?P<anchor>[^)\s]+))?\)")


@dataclasses.dataclass(frozen=True)
class YamlBlock:
    page: Path
    line: int  # of the block's first content line in the page
    text: str

    @property
    def source(self) -> str:
        return str(self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page)

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


def yaml_blocks(page: Path) -> list[YamlBlock]:
    """The ```yaml blocks of a Markdown page, dedented by their fence's indent."""
    blocks: list[YamlBlock] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    number = 0
    while number < len(lines):
        opening = FENCE.match(lines[number])
        number += 1
        if opening is None:
            continue
        indent, fence = opening["indent"], opening["fence"]
        start, body = number, []
        while number < len(lines) and lines[number].strip() != fence:
            body.append(lines[number].removeprefix(indent))
            number += 1
        number += 1
        blocks.append(YamlBlock(page, start + 1, "\n".join(body) + "\n"))
    return blocks


def hand_written_pages() -> list[Path]:
    return sorted(page for page in DOCS.rglob("*.md") if GENERATED not in page.parents)


def is_config(block: YamlBlock) -> bool:
    """A block whose top level names a config section; a block that is not valid YAML counts, to fail with its place."""
    try:
        documents = list(yaml.safe_load_all(block.text))
    except yaml.YAMLError:
        return True
    return any(isinstance(document, dict) and CONFIG_SECTIONS & document.keys() for document in documents)


@contextlib.contextmanager
def provided_geo_databases(block: YamlBlock, tmp_path: Path) -> Iterator[None]:
    """Geo databases are files an operator fetches before starting (scripts/geo-fetch), and the loader refuses a
    config whose files do not open: for a block that uses geo, small ones are built at the paths it names (relative
    to its data_dir, which then lives in tmp_path), and the block is loaded from there."""
    document = yaml.safe_load(block.text)
    defined = document.get("preprocessors") or {}
    geo = {name: options for name, options in defined.items() if options.get("type") == "geo"}
    used = {name for spec in (document.get("event_types") or {}).values() for name in spec.get("preprocessors", ())}
    if "geo" in used and "geo" not in defined:
        geo["geo"] = {}  # the built-in instance, with the default database
    if not geo:
        yield
        return
    data_dir = tmp_path / str(document.get("data_dir", yaml.safe_load(default_text())["data_dir"])).lstrip("/")
    for options in geo.values():
        for file in (options.get("database", DEFAULT_DATABASE), options.get("asn_database")):
            if file is not None:
                (data_dir / file).parent.mkdir(parents=True, exist_ok=True)
                write_mmdb(data_dir / file, {"192.0.2.0/24": {"country_code": "FR"}})
    with contextlib.chdir(tmp_path):
        yield


def config_problems(block: YamlBlock, tmp_path: Path) -> list[str]:
    """What `trackpoint.config.load` finds wrong with a block, each problem at its line of the page, with its key path,
    as `trackpoint config check` reports a file."""
    config_file = tmp_path / "trackpoint.yaml"
    config_file.write_text(block.text, encoding="utf-8")
    try:
        with provided_geo_databases(block, tmp_path):
            load_config(config_file)
    except ConfigError as error:
        return [
            str(dataclasses.replace(issue, source=block.source, line=block.line + (issue.line or 1) - 1))
            for issue in error.issues
        ]
    return []


CONFIG_BLOCKS = [block for page in hand_written_pages() for block in yaml_blocks(page) if is_config(block)]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built as CI builds it: from the repository root, `--strict` (any warning fails)."""
    site_dir = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        # Material's end-of-life notice (see docs/about.md) would bury the warnings that matter here.
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}{result.stderr}"
    return site_dir


def built_page(site_dir: Path, page: Path) -> Path:
    """Where MkDocs (directory URLs) writes a page: docs/guides/tuning.md -> guides/tuning/index.html."""
    relative = page.relative_to(DOCS).with_suffix("")
    if relative.name == "index":
        relative = relative.parent
    return site_dir / relative / "index.html"


@pytest.mark.e2e  # builds the site with mkdocs, a subprocess
def test_the_site_builds_strictly_with_every_page(site: Path) -> None:
    pages = sorted(DOCS.rglob("*.md"))
    assert DOCS / "quickstart.md" in pages and GENERATED / "configuration.md" in pages
    missing = [str(page.relative_to(DOCS)) for page in pages if not built_page(site, page).is_file()]
    assert missing == []
    assert (site / "reference" / "openapi.json").read_bytes() == (GENERATED / "openapi.json").read_bytes()
    quickstart = built_page(site, DOCS / "quickstart.md").read_text(encoding="utf-8")
    assert "redis_streams" in quickstart and "tabbed-set" in quickstart  # the tabs rendered, config included
    dsp_guide = built_page(site, DOCS / "guides" / "dsp-banker.md").read_text(encoding="utf-8")
    assert "trusted_proxies" in dsp_guide  # examples/dsp.yaml, included by the snippet


@pytest.mark.e2e  # builds the site with mkdocs, a subprocess
def test_the_benchmark_charts_are_published_from_bench_results(site: Path) -> None:
    charts = sorted(CHARTS.glob("*.png"))
    assert {chart.name for chart in charts} >= {"latest.png", "queues.png", "batch.png"}
    benchmarks = built_page(site, DOCS / "benchmarks.md").read_text(encoding="utf-8")
    for chart in charts:
        published = site / "assets" / "bench" / chart.name
        assert published.read_bytes() == chart.read_bytes(), chart.name
        assert f'src="../assets/bench/{chart.name}"' in benchmarks, f"benchmarks.md does not show {chart.name}"
    # docs/img holds screenshots (the live dashboard's, refreshed by tests/test_dashboard.py), never charts
    copies = [png for png in DOCS.rglob("*.png") if png.parent != DOCS / "img" or png.name in {c.name for c in charts}]
    assert not copies, "charts are published from bench/results/, never copied into docs/"


def test_the_quickstart_configs_are_among_the_checked_blocks() -> None:
    """Guards the extraction itself: the quickstart's configs sit in content tabs, indented."""
    quickstart = [block for block in CONFIG_BLOCKS if block.page == DOCS / "quickstart.md"]
    assert len(quickstart) == 2
    assert {"redis_streams", "nats"} == {
        yaml.safe_load(block.text)["collectors"]["events"]["type"] for block in quickstart
    }


@pytest.mark.parametrize("block", CONFIG_BLOCKS, ids=lambda block: block.where)
def test_every_config_in_the_docs_loads(block: YamlBlock, tmp_path: Path) -> None:
    assert config_problems(block, tmp_path) == []


def test_config_blocks_are_recognised_and_checked(tmp_path: Path) -> None:
    """The rule of this module, on a page of its own: a config with a typo fails at its line; other YAML is ignored."""
    page = tmp_path / "page.md"
    page.write_text(
        "# A page\n\n"
        '=== "Tab"\n\n'
        '    ```yaml title="bad.yaml"\n'
        "    server:\n"
        "      prot: 9000\n"
        "    ```\n\n"
        "```yaml\n"
        "services: {tracker: {image: trackpoint}}\n"
        "```\n",
        encoding="utf-8",
    )
    blocks = yaml_blocks(page)
    assert [(block.line, block.text) for block in blocks] == [
        (6, "server:\n  prot: 9000\n"),
        (11, "services: {tracker: {image: trackpoint}}\n"),
    ]
    assert [is_config(block) for block in blocks] == [True, False]
    (problem,) = config_problems(blocks[0], tmp_path)
    assert problem.startswith(f"{page}:7: server.prot: ")


@pytest.mark.e2e  # builds the site with mkdocs, a subprocess
def test_readme_links_into_the_docs_resolve(site: Path) -> None:
    links = [
        (match["target"], match["anchor"]) for match in README_DOCS_LINK.finditer((ROOT / "README.md").read_text())
    ]
    assert links, "README.md links no docs page"
    for target, anchor in links:
        path = ROOT / target
        assert path.is_file(), f"README.md links {target}, which does not exist"
        if anchor:
            assert path.suffix == ".md", f"README.md links an anchor of {target}, which is not a page"
            html = built_page(site, path).read_text(encoding="utf-8")
            assert f'id="{anchor}"' in html, f"README.md links {target}#{anchor}, which has no such anchor"


@pytest.mark.e2e  # builds the site with mkdocs, a subprocess
def test_each_benchmark_chart_has_the_table_of_its_numbers_beside_it(site: Path) -> None:
    benchmarks = built_page(site, DOCS / "benchmarks.md").read_text(encoding="utf-8")
    latest = json.loads((CHARTS / "latest.json").read_text())
    flood = json.loads((CHARTS / "flood.json").read_text())
    soak = json.loads((CHARTS / "soak.json").read_text())
    queues = json.loads((CHARTS / "queues.json").read_text())
    batch = json.loads((CHARTS / "batch.json").read_text())
    peers = json.loads((CHARTS / "peers.json").read_text())
    server_time = json.loads((CHARTS / "server_time.json").read_text())
    expected = {
        "latest": [f"{latest['targets']['tracker']['rps']:,.0f}", f"{latest['targets']['nginx']['rps']:,.0f}"],
        "flood": [scenario["name"] for scenario in flood["scenarios"]],
        "soak": [html.escape(check["value"], quote=False) for check in soak["checks"]],
        "queues": [html.escape(check["value"], quote=False) for check in queues["checks"]],
        "batch": [f"{batch[name]['events_per_s']:,.0f}" for name in ("single", "batch")],
        "peers": [f"{stack['rps_median']:,.0f}" for stack in peers["stacks"].values()],
        "server_time": [f">{stack['p99_us']:,.0f}<" for stack in server_time["medians"].values()],
    }
    for chart, numbers in expected.items():
        at = benchmarks.index(f'<a href="../assets/bench/{chart}.png"><img')  # a click opens the chart full size
        table = benchmarks[benchmarks.index("<table", at) : benchmarks.index("</table>", at)]
        assert benchmarks.find("<h2", at, benchmarks.index("<table", at)) == -1, f"{chart}: no table under the chart"
        for number in numbers:
            assert number in table, (chart, number)
    assert "<!-- bench-table" not in benchmarks


@pytest.mark.e2e  # builds the site with mkdocs, a subprocess
def test_the_http_and_admin_api_is_a_page_of_the_site(site: Path) -> None:
    page = built_page(site, GENERATED / "http-api.md").read_text(encoding="utf-8")
    document = json.loads((GENERATED / "openapi.json").read_text())
    for path, item in document["paths"].items():
        for method in item:
            if method != "servers":
                assert re.search(rf"<h3[^>]*><code>[A-Z, ]*{method.upper()}[A-Z, ]* {re.escape(path)}</code>", page), (
                    method,
                    path,
                )
    assert page.count("<table>") > len(document["paths"])
    index = (site / "index.html").read_text(encoding="utf-8")
    assert 'href="reference/http-api/"' in index  # in the navigation


@pytest.mark.e2e  # builds the site with mkdocs, a subprocess
def test_the_header_links_the_repository_and_shows_the_version(site: Path) -> None:
    from trackpoint import __version__

    repo_url = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["repo_url"]
    for page in (site / "index.html", built_page(site, DOCS / "quickstart.md")):
        text = page.read_text(encoding="utf-8")
        assert f'<a href="{repo_url}" title="Go to repository" class="md-source">' in text
        assert f'<li class="md-source__fact md-source__fact--version">{__version__}</li>' in text
        assert 'data-md-component="source"' not in text  # Material's script would call the GitHub API


@pytest.mark.e2e  # builds the site with mkdocs, a subprocess
def test_long_code_lines_wrap_on_every_page(site: Path) -> None:
    css = (site / "assets" / "extra.css").read_text(encoding="utf-8")
    assert re.search(r"\.md-typeset pre > code \{[^}]*white-space: pre-wrap", css)
    for page in hand_written_pages():
        assert "assets/extra.css" in built_page(site, page).read_text(encoding="utf-8"), page


def test_the_licence_is_the_apache_2_0_text_the_package_declares() -> None:
    licence = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert licence.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in licence
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")
