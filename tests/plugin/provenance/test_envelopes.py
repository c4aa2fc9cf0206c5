"""DSSE envelopes, keys and rotation: our code and an independent implementation agree."""

from __future__ import annotations

import base64
import copy
import json
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import CryptoSigner, SSlibKey

from plugin.provenance.dsse import EnvelopeError, open_envelope, pae, sign_envelope
from plugin.provenance.keys import (
    KeyStore,
    KeyStoreError,
    SigningKey,
    key_from_jwk,
    keys_from_jwks,
    thumbprint,
)
from plugin.provenance.statement import payload_of

NOW = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
STATEMENT = {
    "_type": "https://in-toto.io/Statement/v1",
    "subject": [{"name": "Opportunity/0065g00000AcmeAAA", "digest": {"sha256": "ab" * 32}}],
    "predicateType": "https://onrecord.dev/attestations/record-change/v1",
    "predicate": {"channel": "Form", "sequence": 1},
}


def independent_key(key: SigningKey) -> SSlibKey:
    return SSlibKey.from_crypto(key.public, keyid=key.kid, scheme="ed25519")


def test_pae_is_dsse_v1_exactly() -> None:
    # The DSSE specification's own example.
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )
    assert pae("t", "é".encode()) == b"DSSEv1 1 t 2 \xc3\xa9"  # lengths in bytes


def test_our_envelope_verifies_with_securesystemslib() -> None:
    key = SigningKey.generate()
    envelope = sign_envelope(payload_of(STATEMENT), key)
    theirs = Envelope.from_dict(copy.deepcopy(envelope))
    assert theirs.payload_type == "application/vnd.in-toto+json"
    assert list(theirs.verify([independent_key(key)], 1)) == [key.kid]
    assert json.loads(theirs.payload) == STATEMENT


def test_securesystemslib_envelope_opens_with_our_code() -> None:
    key = SigningKey.generate()
    theirs = Envelope(payload_of(STATEMENT), "application/vnd.in-toto+json", {})
    theirs.sign(CryptoSigner(key.private, independent_key(key)))
    payload, kid = open_envelope(theirs.to_dict(), {key.kid: key.public})
    assert (json.loads(payload), kid) == (STATEMENT, key.kid)


def test_changing_any_byte_of_the_statement_or_signature_is_detected() -> None:
    key = SigningKey.generate()
    envelope = sign_envelope(payload_of(STATEMENT), key)
    payload = base64.b64decode(envelope["payload"])
    sig = base64.b64decode(envelope["signatures"][0]["sig"])
    keys = {key.kid: key.public}
    for i in range(len(payload)):
        altered = bytearray(payload)
        altered[i] ^= 0x01
        forged = envelope | {"payload": base64.b64encode(bytes(altered)).decode()}
        with pytest.raises(EnvelopeError) as err:
            open_envelope(forged, keys)
        assert err.value.reason == "signature_invalid", i
        with pytest.raises(VerificationError):
            Envelope.from_dict(copy.deepcopy(forged)).verify([independent_key(key)], 1)
    for i in range(len(sig)):
        altered = bytearray(sig)
        altered[i] ^= 0x80
        forged = envelope | {
            "signatures": [{"keyid": key.kid, "sig": base64.b64encode(bytes(altered)).decode()}]
        }
        with pytest.raises(EnvelopeError, match="altered"):
            open_envelope(forged, keys)


def test_a_signature_by_an_unpublished_key_is_named_unknown_key() -> None:
    envelope = sign_envelope(payload_of(STATEMENT), SigningKey.generate())
    with pytest.raises(EnvelopeError) as err:
        open_envelope(envelope, {(other := SigningKey.generate()).kid: other.public})
    assert err.value.reason == "unknown_key"


def test_key_id_is_the_rfc7638_thumbprint_of_the_rfc8037_jwk() -> None:
    # RFC 8037 appendix A.3: the thumbprint of the RFC's example Ed25519 key.
    jwk = {"crv": "Ed25519", "kty": "OKP", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
    assert thumbprint(key_from_jwk(jwk)) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
    with pytest.raises(ValueError, match="thumbprint"):
        keys_from_jwks({"keys": [jwk | {"kid": "something-else"}]})


def test_the_private_key_file_is_owner_only_and_can_be_encrypted(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys", passphrase="correct horse battery staple")
    kid = store.create(NOW)
    pem = tmp_path / "keys" / f"{kid}.pem"
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in pem.read_bytes()
    assert store.signing_key().kid == kid
    with pytest.raises(KeyStoreError, match="passphrase"):
        KeyStore(tmp_path / "keys").signing_key()


def test_after_rotation_old_statements_verify_and_new_ones_use_the_new_key(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys")
    first = store.create(NOW)
    old = sign_envelope(payload_of(STATEMENT), store.signing_key())
    second = store.rotate(NOW)
    new = sign_envelope(payload_of(STATEMENT), store.signing_key())
    assert first != second and new["signatures"][0]["keyid"] == second
    published = keys_from_jwks(store.jwks())  # only what anyone can fetch
    assert open_envelope(old, published)[1] == first
    assert open_envelope(new, published)[1] == second
    assert not (tmp_path / "keys" / f"{first}.pem").exists()  # the old private key is gone
    assert [k["kid"] for k in store.jwks()["keys"]] == [second, first]
    assert all(k["kty"] == "OKP" and k["crv"] == "Ed25519" and "d" not in k for k in store.jwks()["keys"])


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        pytest.param({"subject": []}, "non-empty subject", id="empty subject"),
        pytest.param(
            {"subject": [{"name": "Opportunity/1"}]}, "non-empty digest", id="subject without digest"
        ),
        pytest.param({"subject": [{"name": "x", "digest": {}}]}, "non-empty digest", id="empty digest"),
        pytest.param({"predicateType": ""}, "predicateType", id="empty predicateType"),
        pytest.param({"predicate": []}, "predicate object", id="predicate not an object"),
    ],
)
def test_statements_the_in_toto_validator_refuses_are_refused(change: dict, problem: str) -> None:
    # The cases the in-toto attestation framework's reference validator refuses (issue found by
    # trying its test statements against parse_statement).
    from plugin.provenance.statement import STATEMENT_TYPE, parse_statement

    good = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": "Opportunity/1", "digest": {"sha256": "ab" * 32}}],
        "predicateType": "https://onrecord.dev/attestations/record-change/v1",
        "predicate": {},
    }
    parse_statement(json.dumps(good).encode())
    with pytest.raises(ValueError, match=problem):
        parse_statement(json.dumps(good | change).encode())
