"""One rule for secrets (security/secrets.py): every option kind reads the same relative file from data_dir, the
"exactly one of env/file" check and the error naming the option live in one place, and one HMAC implementation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import SmallDisk, load_config
from trackpoint.config.model import SecretSource, SigningKey
from trackpoint.preprocessors.decrypt_price.config import DecryptPriceConfig, ExchangeKeys, read_price_key
from trackpoint.preprocessors.pseudonymize.config import PseudonymizeConfig
from trackpoint.preprocessors.pseudonymize.preprocessor import Pseudonymize
from trackpoint.security.keyfile import create_key_file
from trackpoint.security.postback_auth import read_advertiser_secret
from trackpoint.security.resolve import unresolved_secrets
from trackpoint.security.secrets import SecretError, env_secret, read_secret
from trackpoint.security.signing import load_key

SRC = Path(__file__).resolve().parent.parent / "src" / "trackpoint"
RAW_KEY = secrets.token_bytes(24)
KEY_TEXT = base64.urlsafe_b64encode(RAW_KEY)  # web-safe base64: a valid price key and, as text, a valid secret
RELATIVE = "keys/shared.key"


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A data_dir holding keys/shared.key, and a working directory elsewhere (holding a decoy of the same name)."""
    data = tmp_path / "data"
    (data / "keys").mkdir(parents=True)
    (data / RELATIVE).write_bytes(KEY_TEXT + b"\n")
    elsewhere = tmp_path / "cwd"
    (elsewhere / "keys").mkdir(parents=True)
    (elsewhere / RELATIVE).write_bytes(b"decoy-decoy-decoy-decoy-decoy")
    monkeypatch.chdir(elsewhere)
    return str(data)


def test_the_same_relative_file_resolves_identically_for_every_option_kind(data_dir: str) -> None:
    assert load_key("k1", SigningKey(secret_file=RELATIVE), data_dir) == KEY_TEXT
    assert read_advertiser_secret("acme", SecretSource(secret_file=RELATIVE), data_dir) == KEY_TEXT
    keys = ExchangeKeys(encryption_key_file=RELATIVE, integrity_key_file=RELATIVE)
    assert read_price_key("p", "adx", "encryption", keys, data_dir) == RAW_KEY
    assert read_price_key("p", "adx", "integrity", keys, data_dir) == RAW_KEY
    # pseudonymize used to read its file from the working directory (the decoy): its pseudonym proves which key
    config = PseudonymizeConfig(keys={"k1": SecretSource(secret_file=RELATIVE)}, current="k1")
    pseudonym = Pseudonymize("p", config, data_dir).pseudonym("user-1")
    expected = base64.urlsafe_b64encode(hmac.digest(KEY_TEXT, b"user-1", "sha256"))[:22].decode()
    assert pseudonym == f"k1:{expected}"


def test_start_up_resolution_reads_every_option_kind_from_data_dir(tmp_path: Path, data_dir: str) -> None:
    source = {"secret_file": RELATIVE}
    document: dict[str, Any] = {
        "data_dir": data_dir,
        "signing": {"keys": {"k1": source}},
        "preprocessors": {
            "pseudonymize": {"type": "pseudonymize", "keys": {"k1": source}, "current": "k1"},
            "decrypt_price": {
                "type": "decrypt_price",
                "exchanges": {"adx": {"encryption_key_file": RELATIVE, "integrity_key_file": RELATIVE}},
            },
        },
        "collectors": {"nats": {"type": "nats", "credentials_file": RELATIVE}},
        "event_types": {
            "conversion": {
                "paths": ["/conv"],
                "fields": {"adv": {"required": True}},
                "postback_auth": {"mode": "required", "advertiser_field": "adv", "secrets": {"acme": source}},
            }
        },
    }
    path = tmp_path / "trackpoint.yaml"
    path.write_text(yaml.safe_dump(document))
    config = load_config(path).config
    assert list(unresolved_secrets(config)) == []
    Path(data_dir, RELATIVE).unlink()
    problems = {".".join(map(str, where)) for where, _ in unresolved_secrets(config)}
    assert problems == {
        "signing.keys.k1.secret_file",
        "preprocessors.pseudonymize.keys.k1.secret_file",
        "preprocessors.decrypt_price.exchanges.adx.encryption_key_file",
        "preprocessors.decrypt_price.exchanges.adx.integrity_key_file",
        "collectors.nats.credentials_file",
        "event_types.conversion.postback_auth.secrets.acme.secret_file",
    }


def test_the_error_names_the_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TP_TEST_EMPTY", "")
    monkeypatch.delenv("TP_TEST_UNSET", raising=False)
    cases = [
        (("secret", None, None), "secret_env/secret_file: needs exactly one of secret_env and secret_file"),
        (("secret", "TP_TEST_UNSET", "x"), "secret_env/secret_file: needs exactly one"),
        (("secret", "TP_TEST_UNSET", None), "secret_env: environment variable TP_TEST_UNSET is not set"),
        (("secret", "TP_TEST_EMPTY", None), "secret_env: environment variable TP_TEST_EMPTY is not set"),
        (("integrity_key", None, "missing"), "integrity_key_file: cannot read"),
    ]
    for args, message in cases:
        with pytest.raises(SecretError, match=re.escape(message)):
            read_secret(*args, str(tmp_path))
    (tmp_path / "short").write_bytes(b"short")
    with pytest.raises(SecretError, match="secret_file: a secret needs at least 16 bytes"):
        read_secret("secret", None, "short", str(tmp_path))
    with pytest.raises(SecretError, match="token_env: environment variable TP_TEST_UNSET"):
        env_secret("TP_TEST_UNSET", "token_env")
    assert issubclass(SecretError, ValueError)  # callers that caught ValueError keep working


def test_no_module_reads_a_secret_or_checks_one_of_env_and_file_by_itself() -> None:
    """The drift this module fixed: six readers and four one-of checks that disagreed."""
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.name == "secrets.py":
            continue
        text = path.read_text()
        if re.search(r"os\.environ\.get\(|_env is None\) ==|secret_env is None\) ==", text):
            offenders.append(str(path.relative_to(SRC)))
        if re.search(r"Path\([^)]*secret_file\)", text):
            offenders.append(str(path.relative_to(SRC)))
    assert offenders == []


def test_one_hmac_implementation() -> None:
    """HMAC pads are computed in security/precomputed.py only (pseudonymize had its own copy)."""
    pads = [
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if re.search(r"\^ 0x36|\^ 0x5[cC]", path.read_text()) and path.name != "precomputed.py"
    ]
    assert pads == []
    config = PseudonymizeConfig(keys={"k": SecretSource(secret_env="TP_TEST_LONG_KEY")}, current="k")
    long_key = b"k" * 100  # longer than a SHA-256 block: hashed first
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TP_TEST_LONG_KEY", long_key.decode())
        pseudonym = Pseudonymize("p", config, "/nonexistent").pseudonym("v")
    digest = hmac.new(long_key, b"v", hashlib.sha256).digest()
    assert pseudonym == "k:" + base64.urlsafe_b64encode(digest)[:22].decode()


def test_decrypt_price_keys_follow_the_rule(data_dir: str) -> None:
    config = DecryptPriceConfig(exchanges={"adx": ExchangeKeys(encryption_key_file=RELATIVE)})
    with pytest.raises(SecretError, match=r"integrity_key_env/integrity_key_file: .*needs exactly one"):
        read_price_key("p", "adx", "integrity", config.exchanges["adx"], data_dir)


def test_a_key_not_written_for_want_of_space_leaves_nothing_behind(
    small_disk: Callable[..., SmallDisk], tmp_path: Path
) -> None:
    """On a full disk the key is not made (the worker's start fails, retried with backoff) and no temporary file is
    left per attempt: each took an inode of a disk already full. Once there is room the key is made, whole."""
    disk = small_disk(tmp_path / "data")
    (disk.directory / "keys").mkdir()
    disk.fill(inodes=False)  # blocks only: the temporary file is made, its write fails
    key = disk.directory / "keys" / "pseudonymize.key"
    for _ in range(3):
        with pytest.raises(OSError, match="No space left on device"):
            create_key_file(key)
    assert list((disk.directory / "keys").iterdir()) == []
    disk.free()
    create_key_file(key)
    assert [p.name for p in (disk.directory / "keys").iterdir()] == ["pseudonymize.key"]
    assert re.fullmatch(r"[0-9a-f]{64}\n", key.read_text())
