"""RFC 6962 Merkle hashing and proofs, and signed checkpoints."""

from __future__ import annotations

import base64
import hashlib

import pytest

from plugin.provenance import merkle
from plugin.provenance.checkpoint import Checkpoint, CheckpointError, open_checkpoint, sign_checkpoint
from plugin.provenance.keys import SigningKey

# The certificate-transparency reference test leaves and tree heads (RFC 6962 implementations).
CT_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    bytes(range(0x60, 0x70)),
]
CT_ROOTS = {
    1: "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    2: "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    3: "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    4: "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    5: "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    6: "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    7: "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    8: "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
}


def test_tree_heads_match_the_reference_vectors() -> None:
    hashes = [merkle.leaf_hash(leaf) for leaf in CT_LEAVES]
    for size, expected in CT_ROOTS.items():
        assert merkle.root(hashes[:size]).hex() == expected
    assert merkle.root([]).hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_every_inclusion_proof_leads_to_the_root_and_no_other() -> None:
    leaves = [merkle.leaf_hash(str(i).encode()) for i in range(33)]
    for size in range(1, len(leaves) + 1):
        head = merkle.root(leaves[:size])
        for index in range(size):
            proof = merkle.inclusion_proof(index, leaves[:size])
            assert merkle.verify_inclusion(index, size, leaves[index], proof, head)
            other = leaves[(index + 1) % size]
            assert size == 1 or not merkle.verify_inclusion(index, size, other, proof, head)
            if proof:
                assert not merkle.verify_inclusion(index, size, leaves[index], proof[:-1], head)


def mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1 as written, the slow way: the oracle for the tree built once."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return merkle.node_hash(mth(leaves[:k]), mth(leaves[k:]))


def test_one_tree_answers_for_every_prefix_of_its_leaves() -> None:
    tree = merkle.Tree([merkle.leaf_hash(leaf) for leaf in CT_LEAVES])
    assert {size: tree.root(size).hex() for size in CT_ROOTS} == CT_ROOTS
    leaves = [merkle.leaf_hash(str(i).encode()) for i in range(130)]
    tree = merkle.Tree(leaves)
    for size in range(len(leaves) + 1):
        assert tree.root(size) == mth(leaves[:size])
    for size in (1, 2, 3, 63, 64, 65, 100, 130):
        head = mth(leaves[:size])
        for index in range(size):
            proof = tree.inclusion_proof(index, size)
            assert merkle.verify_inclusion(index, size, leaves[index], proof, head)
    with pytest.raises(ValueError):
        tree.root(131)
    with pytest.raises(ValueError):
        tree.inclusion_proof(5, 5)


def test_a_checkpoint_is_a_signed_note_in_the_tlog_checkpoint_format() -> None:
    key = SigningKey.generate()
    root = merkle.root([merkle.leaf_hash(b"a")])
    note = sign_checkpoint(Checkpoint("onrecord.example/log", 1, root), key)
    body, signature = note.split("\n\n")
    assert body.split("\n") == ["onrecord.example/log", "1", base64.b64encode(root).decode()]
    dash, name, sig = signature.rstrip("\n").split(" ")
    assert (dash, name, len(base64.b64decode(sig))) == ("\u2014", "onrecord.example/log", 4 + 64)
    assert open_checkpoint(note, [key.public], "onrecord.example/log") == Checkpoint(
        "onrecord.example/log", 1, root
    )


@pytest.mark.parametrize("change", [("\n1\n", "\n2\n"), ("onrecord.example/log\n", "evil.example/log\n")])
def test_an_altered_checkpoint_does_not_verify(change: tuple[str, str]) -> None:
    key = SigningKey.generate()
    note = sign_checkpoint(Checkpoint("onrecord.example/log", 1, merkle.leaf_hash(b"a")), key)
    with pytest.raises(CheckpointError):
        open_checkpoint(note.replace(*change, 1), [key.public])
    with pytest.raises(CheckpointError, match="known key"):
        open_checkpoint(note, [SigningKey.generate().public])
