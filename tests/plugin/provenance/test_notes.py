"""Signed notes and checkpoints against published examples (C2SP, golang.org/x/mod/sumdb, sum.golang.org)."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from plugin.provenance import merkle
from plugin.provenance.checkpoint import (
    Checkpoint,
    CheckpointError,
    note_key_id,
    open_checkpoint,
    open_note,
    parse_checkpoint,
    sign_checkpoint,
    sign_note,
)
from plugin.provenance.keys import SigningKey, thumbprint


def vkey(text: str) -> tuple[str, str, Ed25519PublicKey]:
    """A sumdb/note verifier key "<name>+<hex key id>+<base64(0x01 || public key)>"."""
    name, key_id, data = text.split("+", 2)
    raw = base64.b64decode(data)
    assert raw[0] == 1  # Ed25519
    return name, key_id, Ed25519PublicKey.from_public_bytes(raw[1:])


# golang.org/x/mod sumdb/note/note_test.go (TestSign, TestOpen): a private key, its verifier key,
# a text and the exact signed note the Go implementation produces.
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
PETER_B64 = "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
PETER_SIG = f"\u2014 PeterNeumann {PETER_B64}\n"
ENOCH_SIG = (
    "\u2014 EnochRoot "
    "rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"
)

# A real checkpoint of the Go checksum database, as GET https://sum.golang.org/lookup/... answered
# it (quoted in github.com/sigsum/sigsum-go RELEASES.md), and sum.golang.org's verifier key (the
# go command's default GOSUMDB key, src/cmd/go/internal/modfetch/key.go in github.com/golang/go).
SUMDB_VKEY = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"
SUMDB_NOTE = (
    "go.sum database tree\n49189689\nftjbAOzaupaIvaPo/G+Dk63nxOZ2s1OPOKIaPtXs7S4=\n\n"
    "\u2014 sum.golang.org "
    "Az3grlKZssqRoMNPpZfKt0TphbbcF+pzXqElURJKRNFKfaUAgqeI5k2AORH0QAhg/ebRwyIqD/OqP4oLtLnNumvOBAM=\n"
)


def peter_key() -> SigningKey:
    raw = base64.b64decode(PETER_SKEY.split("+", 4)[4])
    assert raw[0] == 1
    private = Ed25519PrivateKey.from_private_bytes(raw[1:])
    return SigningKey(thumbprint(private.public_key()), private)


def test_signing_reproduces_the_go_sumdb_note_byte_for_byte() -> None:
    key = peter_key()
    name, key_id, public = vkey(PETER_VKEY)
    assert note_key_id(name, key.public).hex() == key_id == "c74f20a3"
    assert note_key_id(name, public) == note_key_id(name, key.public)
    assert sign_note(TEXT, "PeterNeumann", key) == TEXT + "\n" + PETER_SIG


def test_opening_ignores_unknown_keys_and_needs_one_known() -> None:
    peter, enoch = vkey(PETER_VKEY), vkey(ENOCH_VKEY)
    note = TEXT + "\n" + PETER_SIG + ENOCH_SIG
    assert open_note(note, [(peter[0], peter[2])]) == (TEXT, ["PeterNeumann"])
    assert open_note(note, [(peter[0], peter[2]), (enoch[0], enoch[2])]) == (
        TEXT,
        ["PeterNeumann", "EnochRoot"],
    )
    with pytest.raises(CheckpointError, match="known key"):
        open_note(note, [])
    with pytest.raises(CheckpointError, match="known key"):  # the right key under another name
        open_note(note, [("CarmenSandiego", peter[2])])
    altered = TEXT + "\n" + PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]
    with pytest.raises(CheckpointError):
        open_note(altered, [(peter[0], peter[2])])


@pytest.mark.parametrize(
    "note",
    [
        TEXT,
        TEXT + "\n",
        TEXT + "\n" + PETER_SIG[:-1],
        "\x01" + TEXT + "\n" + PETER_SIG,
        TEXT + "\n" + f"\u2014 Bad Name {PETER_B64}\n",
        TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
        TEXT + "\n" + PETER_SIG * 101,
    ],
)
def test_malformed_notes_of_go_sumdb_are_refused(note: str) -> None:
    peter = vkey(PETER_VKEY)
    with pytest.raises(CheckpointError):
        open_note(note, [(peter[0], peter[2])])


def test_a_real_sum_golang_org_checkpoint_opens() -> None:
    name, key_id, public = vkey(SUMDB_VKEY)
    assert note_key_id(name, public).hex() == key_id
    checkpoint = open_checkpoint(SUMDB_NOTE, [public], key_name=name)
    assert (checkpoint.origin, checkpoint.size) == ("go.sum database tree", 49189689)
    assert base64.b64encode(checkpoint.root_hash).decode() == "ftjbAOzaupaIvaPo/G+Dk63nxOZ2s1OPOKIaPtXs7S4="
    assert checkpoint.body() + "\n" + SUMDB_NOTE.split("\n\n")[1] == SUMDB_NOTE
    with pytest.raises(CheckpointError):
        open_checkpoint(SUMDB_NOTE.replace("49189689", "49189690"), [public], key_name=name)
    with pytest.raises(CheckpointError, match="known key"):  # signed under its name, not its origin
        open_checkpoint(SUMDB_NOTE, [public])
    with pytest.raises(CheckpointError, match="not 'go\\.sum'"):
        open_checkpoint(SUMDB_NOTE, [public], origin="go.sum", key_name=name)


def test_the_go_tlog_tree_text_and_record_hash() -> None:
    # golang.org/x/mod sumdb/tlog/note_test.go TestFormatTree: RecordHash("hello world") is the
    # RFC 6962 leaf hash, and the tree text is the tlog-checkpoint body.
    golden = "go.sum database tree\n123456789012\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0=\n"
    tree = Checkpoint("go.sum database tree", 123456789012, merkle.leaf_hash(b"hello world"))
    assert tree.body() == golden and parse_checkpoint(golden) == tree
    for bad in (
        "go.sum database tree\n0xabcdef\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0=\n",
        "go.sum database tree\n123456789012\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBTOOBIG=\n",
        "go.sum database tree\n0123\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0=\n",
        "go.sum database tree\n123\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0=",
        "go.sum database tree\n123\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0=\n\nx\n",
    ):
        with pytest.raises(CheckpointError):
            parse_checkpoint(bad)


def test_the_c2sp_examples_parse() -> None:
    # c2sp.org/tlog-checkpoint's example (its key is not published: the structure is what is checked).
    note = (
        "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n"
        "\u2014 example.com/behind-the-sofa "
        "Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
    )
    assert parse_checkpoint(note.split("\n\n")[0] + "\n").size == 20852163
    with pytest.raises(CheckpointError, match="known key"):
        open_checkpoint(note, [SigningKey.generate().public])
    # c2sp.org/signed-note's example: the text may hold a blank line; the last one ends it.
    poem = "Ognuno sta solo sul cuor della terra\ntrafitto da un raggio di sole:\n\ned \u00e8 subito sera.\n"
    key = SigningKey.generate()
    signed = sign_note(poem, "quasimodo.example/salvatore", key)
    assert open_note(signed, [("quasimodo.example/salvatore", key.public)])[0] == poem


def test_extension_lines_are_kept_and_signed() -> None:
    key = SigningKey.generate()
    checkpoint = Checkpoint("onrecord.example/log", 2, merkle.leaf_hash(b"a"), ("witness: none",))
    note = sign_checkpoint(checkpoint, key)
    assert note.split("\n")[3] == "witness: none"
    assert open_checkpoint(note, [key.public]) == checkpoint
    with pytest.raises(CheckpointError):
        open_checkpoint(note.replace("witness: none", "witness: many"), [key.public])
    with pytest.raises(CheckpointError):
        sign_checkpoint(Checkpoint("has space", 0, merkle.EMPTY_ROOT), key)
