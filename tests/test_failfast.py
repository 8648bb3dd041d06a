"""Fail fast, and say so: every secret a config names is resolved by `config check`, `run` and a reload before any
worker starts; a worker that keeps dying at start is restarted with backoff, logged once, and fails the health checks.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from conftest import Tracker, free_port, load_config
from trackpoint.cli import app
from trackpoint.process.supervisor import CRASH_LOOP_STARTS, RESTART_BACKOFF_S
from trackpoint.security.resolve import unresolved_secrets

SECRET = secrets.token_hex(16)
PRICE_KEY = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def write(tmp_path: Path, document: dict[str, Any]) -> Path:
    path = tmp_path / "trackpoint.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), **document}, sort_keys=False))
    return path


def postback(secret: dict[str, str]) -> dict[str, Any]:
    return {
        "event_types": {
            "conversion": {
                "paths": ["/conv"],
                "fields": {"adv": {"required": True}, "order_id": {}},
                "postback_auth": {"mode": "required", "advertiser_field": "adv", "secrets": {"acme": secret}},
            }
        }
    }


EVERY_KIND: dict[str, Any] = {
    "signing": {
        "keys": {"k1": {"secret_env": "TP_TEST_SIGNING"}, "auto": {"secret_file": "keys/new.key", "generate": True}}
    },
    "preprocessors": {
        "pseudonymize": {"type": "pseudonymize", "keys": {"k1": {"secret_env": "TP_TEST_PSEUDO"}}, "current": "k1"},
        "decrypt_price": {
            "type": "decrypt_price",
            "exchanges": {"adx": {"encryption_key_env": "TP_TEST_ENC", "integrity_key_file": "keys/adx-int"}},
        },
    },
    "collectors": {
        "kafka": {
            "type": "kafka",
            "topic": "t",
            "bootstrap_servers": "127.0.0.1:9092",
            "properties_env": {"ssl.key.password": "TP_TEST_KAFKA"},
        },
        "nats": {"type": "nats", "token_env": "TP_TEST_NATS"},
        "redis_streams": {"type": "redis_streams", "password_env": "TP_TEST_REDIS"},
        "banker": {"type": "banker", "store": "redis", "password_env": "TP_TEST_BANKER"},
    },
    **postback({"secret_file": "keys/acme"}),
}
EVERY_VARIABLE = ["TP_TEST_SIGNING", "TP_TEST_PSEUDO", "TP_TEST_ENC", "TP_TEST_KAFKA", "TP_TEST_NATS", "TP_TEST_REDIS"]


def test_every_secret_a_config_names_is_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in [*EVERY_VARIABLE, "TP_TEST_BANKER"]:
        monkeypatch.delenv(variable, raising=False)
    config = load_config(write(tmp_path, EVERY_KIND)).config
    problems = {".".join(map(str, path)): message for path, message in unresolved_secrets(config)}
    assert set(problems) == {
        "signing.keys.k1.secret_env",
        "preprocessors.pseudonymize.keys.k1.secret_env",
        "preprocessors.decrypt_price.exchanges.adx.encryption_key_env",
        "preprocessors.decrypt_price.exchanges.adx.integrity_key_file",
        "collectors.kafka.properties_env.ssl.key.password",
        "collectors.nats.token_env",
        "collectors.redis_streams.password_env",
        "collectors.banker.password_env",
        "event_types.conversion.postback_auth.secrets.acme.secret_file",
    }  # the generated signing key is not there yet: made on first start, not a missing secret
    assert "TP_TEST_NATS is not set" in problems["collectors.nats.token_env"]
    assert "adx-int" in problems["preprocessors.decrypt_price.exchanges.adx.integrity_key_file"]

    for variable in EVERY_VARIABLE:
        monkeypatch.setenv(variable, PRICE_KEY if variable == "TP_TEST_ENC" else SECRET)
    monkeypatch.setenv("TP_TEST_BANKER", "")  # empty is as good as unset
    keys = tmp_path / "data" / "keys"
    keys.mkdir(parents=True)
    (keys / "adx-int").write_text(PRICE_KEY)
    (keys / "acme").write_text("short")
    problems = {".".join(map(str, path)): message for path, message in unresolved_secrets(config)}
    assert set(problems) == {
        "collectors.banker.password_env",
        "event_types.conversion.postback_auth.secrets.acme.secret_file",
    }
    assert "at least 16 bytes" in problems["event_types.conversion.postback_auth.secrets.acme.secret_file"]
    monkeypatch.setenv("TP_TEST_BANKER", SECRET)
    (keys / "acme").write_text(SECRET)
    assert list(unresolved_secrets(config)) == []


def test_config_check_names_the_option_and_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TP_TEST_ACME", raising=False)
    path = write(tmp_path, postback({"secret_env": "TP_TEST_ACME"}))
    result = CliRunner().invoke(app, ["config", "check", str(path)])
    assert result.exit_code == 2
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if "TP_TEST_ACME" in text)
    where = f"{path}:{line}: event_types.conversion.postback_auth.secrets.acme.secret_env:"
    assert f"{where} postback_auth: advertiser 'acme': environment variable TP_TEST_ACME is not set" in result.stderr
    monkeypatch.setenv("TP_TEST_ACME", SECRET)
    result = CliRunner().invoke(app, ["config", "check", str(path)])
    assert result.exit_code == 0, result.output


@pytest.mark.e2e
def test_run_refuses_to_start_without_a_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TP_TEST_ACME", raising=False)
    path = write(tmp_path, postback({"secret_env": "TP_TEST_ACME"}))
    command = [sys.executable, "-m", "trackpoint", "run", "--config", str(path), "--workers", "1"]
    ports = ["--port", str(free_port()), "--admin-port", str(free_port())]
    result = subprocess.run([*command, *ports], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "event_types.conversion.postback_auth.secrets.acme.secret_env" in result.stderr
    assert "TP_TEST_ACME is not set" in result.stderr
    assert "listening" not in result.stderr  # refused before any socket or worker


def test_a_reload_that_loses_a_secret_is_refused(tracker_factory: Any) -> None:
    tracker: Tracker = tracker_factory()
    pids = tracker.worker_pids()
    secret_file = tracker.data_dir / "acme.secret"
    document = yaml.safe_load(tracker.config_path.read_text())
    document.update(postback({"secret_file": str(secret_file)}))
    tracker.config_path.write_text(yaml.safe_dump(document))
    tracker.signal(signal.SIGHUP)
    assert tracker.wait_metric("trackpoint_reload_failures_total", "", 1) == 1
    assert "event_types.conversion.postback_auth.secrets.acme.secret_file" in tracker.output()
    assert tracker.worker_pids() == pids  # the running workers keep serving
    assert tracker.get("/i?imp=still")[0] == 200
    secret_file.write_text(SECRET)
    tracker.signal(signal.SIGHUP)
    assert tracker.wait_metric("trackpoint_reloads_total", "", 1, timeout_s=20) == 1


def health(tracker: Tracker, path: str) -> tuple[int, dict[str, Any]]:
    status, _, body = tracker.admin("GET", path)
    answer: dict[str, Any] = json.loads(body)
    return status, answer


def test_a_worker_that_keeps_failing_at_start_fails_the_health_checks(tracker_factory: Any, tmp_path: Path) -> None:
    """The secret file of a running tracker disappears (a rotated volume), then a worker dies: its replacement
    cannot start. The supervisor keeps restarting it with backoff, logs the error once, and says so on /healthz
    and /readyz; once the secret is back the worker starts and the tracker is healthy again."""
    secret_file = tmp_path / "acme.secret"
    secret_file.write_text(SECRET)
    tracker: Tracker = tracker_factory(postback({"secret_file": str(secret_file)}), workers=2)
    assert health(tracker, "/healthz") == (200, {"status": "ok"})
    secret_file.unlink()
    victim = tracker.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)

    seen: dict[int, float] = {}  # failed starts in a row -> the backoff before the next attempt, as reported
    deadline = time.monotonic() + 30
    while max(seen, default=0) < 4:
        assert time.monotonic() < deadline, f"no crash loop reported: {seen}\n{tracker.output()}"
        status, answer = health(tracker, "/healthz")
        if status == 503:
            assert answer["status"] == "crash_loop"
            assert "acme.secret" in answer["reason"] and answer["reason"].startswith("worker ")
            (loop,) = answer["crash_looping"]
            seen[loop["failed_starts"]] = loop["backoff_s"]
        time.sleep(0.02)
    # Each restart waited longer than the one before: one step of the backoff per failed start (the first restart,
    # after the kill, took the first step).
    assert all(backoff == RESTART_BACKOFF_S[failures] for failures, backoff in seen.items()), seen
    assert min(seen) >= CRASH_LOOP_STARTS
    status, ready = health(tracker, "/readyz")
    assert status == 503 and not ready["ready"]
    assert ready["workers_ready"] == 1 and ready["crash_looping"][0]["failed_starts"] >= 4
    assert tracker.metric("trackpoint_worker_restarts_total") >= 3
    assert tracker.process is not None and tracker.process.poll() is None  # the supervisor stays up
    status, headers, _ = tracker.get("/conv?adv=acme&order_id=o-1")  # answered by the other worker
    assert (status, headers["x-reject-reason"]) == (401, "postback_auth_missing")
    output = tracker.output()
    assert output.count("failed to start") == 1, output  # logged once, however often it failed
    assert "acme.secret" in output and "Traceback" in output  # with the error and where it came from

    secret_file.write_text(SECRET)
    tracker.wait_ready(timeout_s=30)
    assert health(tracker, "/healthz") == (200, {"status": "ok"})
    assert "worker 0 started after" in tracker.output() or "worker 1 started after" in tracker.output()


def test_dropped_events_are_logged_with_their_counts(tracker_factory: Any) -> None:
    """A queue collector whose Redis is down, without a spool and with room for 5 events in memory: what it drops
    is counted and logged as one warning with the count, not once per event."""
    down = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    queue = {"type": "redis_streams", "url": down, "max_pending_events": 5, "spool": {"enabled": False}}
    config = {
        "collectors": {"queue": queue},
        "event_types": {"impression": {"preset": "impression", "collectors": ["log", "queue"]}},
    }
    tracker: Tracker = tracker_factory(config)
    for i in range(40):
        assert tracker.get(f"/i?imp=drop-{i}")[0] == 200
    dropped = tracker.wait_metric("trackpoint_collector_dropped_total", 'collector="queue"', 35)
    assert dropped >= 35  # at most 5 wait in memory
    deadline = time.monotonic() + 10
    while "collector queue dropped" not in tracker.output():
        assert time.monotonic() < deadline, tracker.output()
        time.sleep(0.05)
    (warning,) = [line for line in tracker.output().splitlines() if "collector queue dropped" in line]
    assert " WARNING " in warning and "memory batch full, spool off: " in warning
    logged = int(warning.split("collector queue dropped ")[1].split()[0])
    assert 0 < logged <= dropped
    assert len(tracker.wait_events(40)) == 40  # the log collector has every one
