"""Encrypted win prices: Google's published test vectors, forged and malformed tokens, the IV age, the macro that
nobody expanded, and the whole path through a running tracker."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from conftest import load_config
from trackpoint.adtech.price import PriceDecrypter, PriceError, decrypt_price, encrypt_price
from trackpoint.config.load import ConfigError
from trackpoint.event import Context, Event, Meta
from trackpoint.fields.converters import Reject
from trackpoint.fields.macros import unsubstituted_price_macro
from trackpoint.preprocessors.decrypt_price.config import DecryptPriceConfig, ExchangeKeys
from trackpoint.preprocessors.decrypt_price.preprocessor import DecryptPrice

# Google's sample keys and price confirmations (Authorized Buyers, "Decrypt price confirmations").
ENCRYPTION_KEY_B64 = "skU7Ax_NL5pPAFyKdkfZjZz2-VhIN8bjj1rVFOaJ_5o="
INTEGRITY_KEY_B64 = "arO23ykdNqUQ5LEoQ0FVmPkBd7xB5CO89PDZlSjpFxo="
ENCRYPTION_KEY = base64.urlsafe_b64decode(ENCRYPTION_KEY_B64)
INTEGRITY_KEY = base64.urlsafe_b64decode(INTEGRITY_KEY_B64)
GOOGLE_VECTORS = [
    ("YWJjMTIzZGVmNDU2Z2hpN7fhCuPemCce_6msaw", 100),
    ("YWJjMTIzZGVmNDU2Z2hpN7fhCuPemCAWJRxOgA", 1900),
    ("YWJjMTIzZGVmNDU2Z2hpN7fhCuPemC32prpWWw", 2700),
]
VECTOR_IV = b"abc123def456ghi7"  # the vectors' IV: its first four bytes, "abc1", are the timestamp's seconds
VECTOR_SECONDS = int.from_bytes(b"abc1", "big")


@pytest.mark.parametrize(("token", "micros"), GOOGLE_VECTORS)
def test_google_vectors(token: str, micros: int) -> None:
    assert decrypt_price(token, ENCRYPTION_KEY, INTEGRITY_KEY) == (micros, VECTOR_SECONDS)
    assert decrypt_price(token + "==", ENCRYPTION_KEY, INTEGRITY_KEY)[0] == micros  # padding is optional
    assert encrypt_price(micros, VECTOR_IV, ENCRYPTION_KEY, INTEGRITY_KEY) == token


def _reason(token: str) -> str:
    with pytest.raises(PriceError) as caught:
        PriceDecrypter(ENCRYPTION_KEY, INTEGRITY_KEY).decrypt(token)
    return caught.value.reason


def test_a_tampered_token_fails_its_signature() -> None:
    token = GOOGLE_VECTORS[0][0]
    for at in (0, 10, 22, 30, 36):  # IV, encrypted price and signature alike
        flipped = "A" if token[at] != "A" else "B"
        assert _reason(token[:at] + flipped + token[at + 1 :]) == "price_signature_invalid"
    assert _reason(GOOGLE_VECTORS[0][0][:32] + GOOGLE_VECTORS[1][0][32:]) == "price_signature_invalid"
    other_key = PriceDecrypter(INTEGRITY_KEY, ENCRYPTION_KEY)
    with pytest.raises(PriceError, match="price_signature_invalid"):
        other_key.decrypt(token)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "YWJjMTIzZGVmNDU2Z2hpN7fhCuPemCce_6ms",  # truncated
        "YWJjMTIzZGVmNDU2Z2hpN7fhCuPemCce_6msawAAAA",  # too long
        "YWJjMTIzZGVmNDU2Z2hpN7fhCuPemCce/6msaw",  # standard alphabet: not web-safe
        "YWJjMTIzZGVmNDU2Z2hpN7fhCuPemCce_6ms*w",
        "YWJjMTIzZGVmNDU2Z2hpN7fhCuPemCce_6msaw===",
        "1.25",
        "é" * 38,
    ],
)
def test_garbage_is_malformed(token: str) -> None:
    assert _reason(token) == "price_malformed"


def test_unsubstituted_macro_is_recognised() -> None:
    assert unsubstituted_price_macro("${AUCTION_PRICE}")
    assert unsubstituted_price_macro("${AUCTION_PRICE:B64}")
    assert unsubstituted_price_macro("%24%7BAUCTION_PRICE%7D")  # arrived encoded twice
    assert not unsubstituted_price_macro(GOOGLE_VECTORS[0][0])


# --- the preprocessor ------------------------------------------------------------------------------------------


def _win(price: str, **dims: str) -> Event:
    return Event("id", "win", 0, {"imp": "i1", "price": price, **dims}, {}, Context(), Meta(worker=0, config="x"))


def _preprocessor(monkeypatch: pytest.MonkeyPatch, **options: Any) -> DecryptPrice:
    monkeypatch.setenv("TP_TEST_ENC", ENCRYPTION_KEY_B64)
    monkeypatch.setenv("TP_TEST_INT", INTEGRITY_KEY_B64.rstrip("="))
    keys = ExchangeKeys(encryption_key_env="TP_TEST_ENC", integrity_key_env="TP_TEST_INT")
    config = DecryptPriceConfig(exchanges={"adx": keys}, **options)
    preprocessor = DecryptPrice("decrypt_price", config, ".")
    preprocessor.clock = lambda: VECTOR_SECONDS + 30.0
    return preprocessor


def _rejected(preprocessor: DecryptPrice, event: Event) -> tuple[int, str, str | None]:
    with pytest.raises(Reject) as caught:
        preprocessor(event)
    return caught.value.status, caught.value.reason, caught.value.field


def test_preprocessor_moves_the_price_into_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    preprocessor = _preprocessor(monkeypatch)
    event = preprocessor(_win(GOOGLE_VECTORS[1][0]))
    assert event.metrics == {"price": 1900} and "price" not in event.dims
    assert preprocessor.input_fields["price"].required


def test_preprocessor_rejections(monkeypatch: pytest.MonkeyPatch) -> None:
    preprocessor = _preprocessor(monkeypatch, max_age_s=60, exchange_field="exch")
    token = GOOGLE_VECTORS[0][0]
    assert _rejected(preprocessor, _win("${AUCTION_PRICE}")) == (400, "price_macro_unsubstituted", "price")
    assert _rejected(preprocessor, _win(token[:-1] + "A")) == (400, "price_signature_invalid", "price")
    assert _rejected(preprocessor, _win("garbage")) == (400, "price_malformed", "price")
    assert _rejected(preprocessor, _win("1.25")) == (400, "price_malformed", "price")  # plain refused: keys exist
    assert _rejected(preprocessor, _win(token, exch="other")) == (400, "price_exchange_unknown", "exch")
    assert preprocessor(_win(token, exch="adx")).metrics == {"price": 100}
    preprocessor.clock = lambda: VECTOR_SECONDS + 61.0
    assert _rejected(preprocessor, _win(token)) == (400, "price_expired", "price")
    preprocessor.clock = lambda: VECTOR_SECONDS - 61.0  # from the future: a clock that disagrees
    assert _rejected(preprocessor, _win(token)) == (400, "price_expired", "price")


def test_negative_and_absurd_prices_are_out_of_range(monkeypatch: pytest.MonkeyPatch) -> None:
    preprocessor = _preprocessor(monkeypatch, max_cpm=500)
    for micros in (-1, 500_000_001, (1 << 63) - 1):
        token = encrypt_price(micros, VECTOR_IV, ENCRYPTION_KEY, INTEGRITY_KEY)
        assert _rejected(preprocessor, _win(token)) == (400, "price_out_of_range", "price")
    token = encrypt_price(500_000_000, VECTOR_IV, ENCRYPTION_KEY, INTEGRITY_KEY)
    assert preprocessor(_win(token)).metrics == {"price": 500_000_000}


def test_plain_prices_when_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    preprocessor = _preprocessor(monkeypatch, accept_plain=True, max_cpm=500)
    assert preprocessor(_win("2.35")).metrics == {"price": 2_350_000}
    assert preprocessor(_win(GOOGLE_VECTORS[2][0])).metrics == {"price": 2700}
    assert _rejected(preprocessor, _win("-1")) == (400, "price_out_of_range", "price")
    assert _rejected(preprocessor, _win("500.000001")) == (400, "price_out_of_range", "price")
    assert _rejected(preprocessor, _win("%24%7BAUCTION_PRICE%7D")) == (400, "price_macro_unsubstituted", "price")
    # Without exchanges, plain is the default.
    assert DecryptPrice("p", DecryptPriceConfig(), ".")(_win("1")).metrics == {"price": 1_000_000}


def test_keys_are_read_at_start_with_clear_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TP_MISSING", raising=False)
    missing = ExchangeKeys(encryption_key_env="TP_MISSING", integrity_key_env="TP_MISSING")
    with pytest.raises(ValueError, match="exchange adx: encryption key: environment variable TP_MISSING"):
        DecryptPrice("p", DecryptPriceConfig(exchanges={"adx": missing}), ".")
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "enc").write_text(ENCRYPTION_KEY_B64 + "\n")
    (tmp_path / "keys" / "int").write_text("not base64!")
    from_files = ExchangeKeys(encryption_key_file="keys/enc", integrity_key_file="keys/int")
    with pytest.raises(ValueError, match="integrity key: not web-safe base64"):
        DecryptPrice("p", DecryptPriceConfig(exchanges={"adx": from_files}), str(tmp_path))
    (tmp_path / "keys" / "int").write_text(INTEGRITY_KEY_B64)
    preprocessor = DecryptPrice("p", DecryptPriceConfig(exchanges={"adx": from_files}), str(tmp_path))
    assert preprocessor(_win(GOOGLE_VECTORS[0][0])).metrics == {"price": 100}


# --- configuration ---------------------------------------------------------------------------------------------


def test_example_validates_without_the_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ADX_ENCRYPTION_KEY", raising=False)
    monkeypatch.delenv("ADX_INTEGRITY_KEY", raising=False)
    example = Path(__file__).resolve().parent.parent / "examples" / "dsp-wins.yaml"
    config = load_config(example).config
    assert isinstance(config.preprocessors["decrypt_price"], DecryptPriceConfig)
    assert config.event_types["win"].fields["price"].type == "string"


def test_config_check_catches_a_money_price_and_bad_keys(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "preprocessors:\n"
        "  decrypt_price:\n"
        "    type: decrypt_price\n"
        "    default_exchange: nope\n"
        "    exchanges:\n"
        "      adx: {encryption_key_env: A, encryption_key_file: a, integrity_key_env: B}\n"
        "event_types:\n"
        "  win: {preset: win, preprocessors: [decrypt_price]}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "encryption key needs exactly one of encryption_key_env and encryption_key_file" in message
    assert "no exchange named 'nope'" in message
    assert "event_types.win.fields.price" in message and "declare it `type: string`" in message


def test_plain_money_field_names_the_unsubstituted_macro() -> None:
    from trackpoint.config.model import FieldSpec
    from trackpoint.fields.types import make_converter

    convert = make_converter("price", FieldSpec(type="money", min=0, max=100000))
    for raw in ("${AUCTION_PRICE}", "${AUCTION_PRICE:B64}"):
        with pytest.raises(Reject, match="price_macro_unsubstituted"):
            convert(raw)
    with pytest.raises(Reject, match="invalid_field"):
        convert("abc")


# --- end to end ------------------------------------------------------------------------------------------------

E2E_CONFIG: dict[str, Any] = {
    "preprocessors": {
        "decrypt_price": {
            "type": "decrypt_price",
            "exchange_field": "exch",
            "exchanges": {"adx": {"encryption_key_env": "TP_E2E_ENC", "integrity_key_env": "TP_E2E_INT"}},
        }
    },
    "event_types": {
        "win": {
            "preset": "win",
            "fields": {
                "imp": {"required": True, "max_len": 64},
                "price": {"type": "string", "required": True, "max_len": 64},
                "cid": {"max_len": 64},
            },
            "preprocessors": ["decrypt_price"],
        }
    },
}


def test_encrypted_wins_end_to_end(tracker_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TP_E2E_ENC", ENCRYPTION_KEY_B64)
    monkeypatch.setenv("TP_E2E_INT", INTEGRITY_KEY_B64)
    tracker = tracker_factory(E2E_CONFIG)
    token = GOOGLE_VECTORS[1][0]
    assert tracker.get(tracker.sign(f"/win?imp=e2e-1&cid=c1&exch=adx&price={token}"))[0] == 204
    status, _, body = tracker.get(tracker.sign("/win?imp=e2e-2&exch=adx&price=${AUCTION_PRICE}"))
    assert status == 400 and b"price_macro_unsubstituted" in body
    status, _, body = tracker.get(tracker.sign("/win?imp=e2e-3&exch=adx&price=%24%7BAUCTION_PRICE%7D"))
    assert status == 400 and b"price_macro_unsubstituted" in body
    status, _, body = tracker.get(tracker.sign(f"/win?imp=e2e-4&exch=adx&price={token[:-2]}AA"))
    assert status == 400 and b"price_signature_invalid" in body
    status, _, body = tracker.get(tracker.sign(f"/win?imp=e2e-5&exch=other&price={token}"))
    assert status == 400 and b"price_exchange_unknown" in body
    (win,) = tracker.wait_events(1)
    assert win.metrics == {"price": 1900} and win.dims == {"imp": "e2e-1", "cid": "c1", "exch": "adx"}


def test_plain_wins_name_the_unsubstituted_macro(tracker: Any) -> None:
    status, _, body = tracker.get(tracker.sign("/win?imp=m1&price=${AUCTION_PRICE}"))
    assert status == 400 and b"price_macro_unsubstituted" in body
    assert tracker.get(tracker.sign("/win?imp=m2&price=-1"))[0] == 400
    assert tracker.get(tracker.sign("/win?imp=m3&price=1.5"))[0] == 204
