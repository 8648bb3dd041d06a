"""The monitoring that ships in deploy/monitoring: Prometheus alert rules and a Grafana dashboard, validated offline
(promtool, from Debian's prometheus package) and against the metrics a running tracker actually exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import Tracker

pytestmark = pytest.mark.e2e  # promtool runs as a process

MONITORING = Path(__file__).resolve().parent.parent / "deploy" / "monitoring"
RULES = MONITORING / "alerts.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
# Series Prometheus makes itself: not the tracker's to export.
PROMETHEUS_OWN = frozenset({"up"})
METRIC = re.compile(r"\b(trackpoint_[a-z0-9_]+|up)\b(?!\s*\()")
# The alerts the issue asks for, by what they watch: each must be there.
REQUIRED_ALERTS = {
    "TrackpointDown",
    "TrackpointWorkerRestarts",
    "TrackpointRefusalsSpiking",
    "TrackpointSpoolFilling",
    "TrackpointCollectorNotDelivering",
    "TrackpointBankerStoreUnavailable",
    "TrackpointCompressionBehind",
    "TrackpointLogDiskWarning",
}


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def _dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            queries.append(variable["definition"])
    return queries


def _as_promql(query: str) -> str:
    """A dashboard query with Grafana's variables given values, so that promtool can parse it."""
    return query.replace("$__rate_interval", "5m").replace("$instance", ".*")


def _exported(tracker: Tracker) -> set[str]:
    """Every series name on the tracker's /metrics (a histogram's `_bucket`, `_sum` and `_count`)."""
    status, _, body = tracker.admin("GET", "/metrics")
    assert status == 200
    names: set[str] = set()
    for line in body.decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"} if kind == "histogram" else {name}
    return names


def test_promtool_accepts_the_alert_rules() -> None:
    result = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout
    assert {rule["alert"] for rule in _rules()} >= REQUIRED_ALERTS


def test_the_alerts_fire_on_the_series_they_watch() -> None:
    """deploy/monitoring/alerts.test.yml: a tracker down, workers dying, a refusal reason spiking against its own
    baseline, a spool filling (and one that is off, quiet), a banker's store down (and another collector, quiet)."""
    tests = MONITORING / "alerts.test.yml"
    result = subprocess.run(["promtool", "test", "rules", str(tests)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Grafana does not check PromQL before it is run: each panel's query goes through promtool as a recording rule."""
    queries = _dashboard_queries()
    assert len(queries) >= 20
    rules = [{"record": f"trackpoint:dashboard_query_{i}", "expr": _as_promql(q)} for i, q in enumerate(queries)]
    rules[-1]["expr"] = "trackpoint_workers_wanted"  # label_values(...) is Grafana's, not PromQL
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_metric_the_rules_and_the_dashboard_name_is_exported(tracker: Tracker) -> None:
    exported = _exported(tracker)
    assert "trackpoint_requests_total" in exported and "trackpoint_collector_info" in exported
    named: dict[str, set[str]] = {}
    for rule in _rules():
        found = set(METRIC.findall(rule["expr"]))
        assert found, f"alert {rule['alert']} names no metric"
        named[f"alert {rule['alert']}"] = found
    for query in _dashboard_queries():
        named[f"dashboard query {query}"] = set(METRIC.findall(query))
    unknown = {
        where: names - exported - PROMETHEUS_OWN for where, names in named.items() if names - exported - PROMETHEUS_OWN
    }
    assert unknown == {}
    # and the dashboard shows most of what the tracker exports (a new family is worth a panel or an alert)
    shown = set().union(*named.values())
    assert len(shown & exported) >= 30


def test_every_alert_is_in_the_monitoring_guide() -> None:
    """Each rule has its row in docs/monitoring.md's table (when it fires, where to look first)."""
    guide = (MONITORING.parent.parent / "docs" / "monitoring.md").read_text(encoding="utf-8")
    rows = set(re.findall(r"^\| `(Trackpoint\w+)` \|", guide, re.MULTILINE))
    assert {rule["alert"] for rule in _rules()} - rows == set()
