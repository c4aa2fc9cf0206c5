"""Standard Webhooks verification: every way a signature can be wrong is one SignatureError."""

from __future__ import annotations

import base64
import time

import pytest

from plugin import signatures
from plugin.config import ConfigError, load_config
from plugin.signatures import SignatureError, sign, verify

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER = "whsec_" + base64.b64encode(b"another key of 32 bytes, exactly").decode()
NOW = 1_764_150_000
BODY = b'{"id":"evt-1"}'


def headers(sig: str, *, wid: str = "msg_1", ts: int = NOW) -> dict[str, str]:
    return {"Webhook-Id": wid, "Webhook-Timestamp": str(ts), "Webhook-Signature": sig}


def test_valid_signature_is_accepted_with_header_names_in_any_case() -> None:
    got = verify([SECRET], headers(sign(SECRET, "msg_1", NOW, BODY)), BODY, now=NOW)
    assert got.webhook_id == "msg_1" and got.timestamp == NOW


def test_known_vector_from_the_standard_webhooks_reference() -> None:
    # The reference libraries' published test vector.
    body = b'{"test": 2432232314}'
    sig = sign(SECRET, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_any_of_several_signatures_may_match_during_rotation() -> None:
    sig = " ".join(["v1,bm90IGl0", sign(OTHER, "msg_1", NOW, BODY), "v1a,ignored"])
    assert verify([SECRET, OTHER], headers(sig), BODY, now=NOW).webhook_id == "msg_1"


@pytest.mark.parametrize(
    ("hdrs", "reason"),
    [
        ({}, "missing_signature"),
        (headers(""), "missing_signature"),
        (headers("v1,not base64!!"), "malformed_signature"),
        (headers("v2,abc"), "malformed_signature"),
        ({**headers("v1,abc"), "Webhook-Timestamp": "yesterday"}, "malformed_signature"),
        (headers("v1,abc", wid="x\nInjected: 1"), "malformed_signature"),
        (headers("v1," + "A" * 5000), "malformed_signature"),
    ],
)
def test_malformed_headers_raise_signature_error_not_value_error(hdrs: dict[str, str], reason: str) -> None:
    with pytest.raises(SignatureError) as err:
        verify([SECRET], hdrs, BODY, now=NOW)
    assert err.value.reason == reason


def test_tampered_body_is_refused() -> None:
    sig = sign(SECRET, "msg_1", NOW, BODY)
    with pytest.raises(SignatureError) as err:
        verify([SECRET], headers(sig), BODY.replace(b"1", b"2"), now=NOW)
    assert err.value.reason == "bad_signature"


def test_signature_for_another_message_id_is_refused() -> None:
    sig = sign(SECRET, "msg_1", NOW, BODY)
    with pytest.raises(SignatureError) as err:
        verify([SECRET], headers(sig, wid="msg_2"), BODY, now=NOW)
    assert err.value.reason == "bad_signature"


def test_wrong_key_is_refused() -> None:
    with pytest.raises(SignatureError) as err:
        verify([SECRET], headers(sign(OTHER, "msg_1", NOW, BODY)), BODY, now=NOW)
    assert err.value.reason == "bad_signature"


@pytest.mark.parametrize(("offset", "reason"), [(-301, "expired_signature"), (301, "future_signature")])
def test_timestamps_outside_five_minutes_are_refused(offset: int, reason: str) -> None:
    ts = NOW + offset
    with pytest.raises(SignatureError) as err:
        verify([SECRET], headers(sign(SECRET, "msg_1", ts, BODY), ts=ts), BODY, now=NOW)
    assert err.value.reason == reason


def test_timestamps_within_tolerance_are_accepted() -> None:
    for offset in (-299, 299):
        ts = NOW + offset
        verify([SECRET], headers(sign(SECRET, "msg_1", ts, BODY), ts=ts), BODY, now=NOW)


def test_no_configured_secret_fails_closed() -> None:
    with pytest.raises(SignatureError) as err:
        verify([], headers(sign(SECRET, "msg_1", NOW, BODY)), BODY, now=NOW)
    assert err.value.reason == "not_configured"


def test_bad_secret_is_a_signature_error() -> None:
    with pytest.raises(SignatureError) as err:
        sign("whsec_!!!", "msg_1", NOW, BODY)
    assert err.value.reason == "bad_secret"


def test_a_secret_without_base64_padding_is_the_same_secret() -> None:
    # The Standard Webhooks reference libraries accept whsec_ secrets with their '=' left out.
    padded = "whsec_" + base64.b64encode(b"0123456789abcdefghij").decode()
    assert padded.endswith("=")
    unpadded = padded.rstrip("=")
    body = b'{"id": 1}'
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(int(time.time()))}
    headers["webhook-signature"] = signatures.sign(padded, "msg_1", int(headers["webhook-timestamp"]), body)
    signatures.verify([unpadded], headers, body)
    assert load_config(env={"ONRECORD_SALESFORCE__EVENTS_SECRET": unpadded}).salesforce.events_secret


@pytest.mark.parametrize("secret", ["whsec_", "whsec_AAAA", "whsec_!!!!"])
def test_an_empty_short_or_broken_secret_is_refused_at_start_up_and_at_decode(secret: str) -> None:
    with pytest.raises(signatures.SignatureError):
        signatures.decode_secret(secret)
    with pytest.raises(ConfigError, match=r"salesforce\.events_secret"):
        load_config(env={"ONRECORD_SALESFORCE__EVENTS_SECRET": secret})
