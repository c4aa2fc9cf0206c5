"""The Merkle code against published RFC 6962 vectors, and stored-node answers against the RFC itself.

vectors/transparency_dev_merkle.json is data copied unchanged from github.com/transparency-dev/merkle
(Apache-2.0; commit and paths inside it): the leaves, node hashes and roots of
testonly/constants.go, and every inclusion and consistency probe under testdata/ that its
proof/verify_test.go checks (happy paths, and malformed proofs that must fail: wrong indexes and
sizes, altered or truncated proofs, garbage before or after, empty roots and leaves).
"""

from __future__ import annotations

import base64
import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plugin.provenance import merkle

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "vectors" / "transparency_dev_merkle.json").read_text(encoding="utf-8")
)
LEAVES = [merkle.leaf_hash(bytes.fromhex(x)) for x in VECTORS["leaf_inputs_hex"]]


def b64(text: str | None) -> bytes:
    return base64.b64decode(text or "")


def all_hashes_32(*groups: Any) -> bool:
    return all(len(h) == 32 for group in groups for h in group)


def probe_id(probe: dict[str, Any]) -> str:
    return str(probe["file"]).removeprefix("testdata/")


@pytest.mark.parametrize("probe", VECTORS["inclusion_probes"], ids=probe_id)
def test_inclusion_probes(probe: dict[str, Any]) -> None:
    leaf, root = b64(probe["leafHash"]), b64(probe["root"])
    proof = [b64(h) for h in probe["proof"] or []]
    holds = merkle.verify_inclusion(probe["leafIdx"], probe["treeSize"], leaf, proof, root)
    assert holds is not probe["wantErr"]


@pytest.mark.parametrize("probe", VECTORS["consistency_probes"], ids=probe_id)
def test_consistency_probes(probe: dict[str, Any]) -> None:
    root1, root2 = b64(probe["root1"]), b64(probe["root2"])
    proof = [b64(h) for h in probe["proof"] or []]
    holds = merkle.verify_consistency(probe["size1"], probe["size2"], proof, root1, root2)
    # One deliberate difference: transparency-dev accepts equal sizes with equal roots of any
    # length ("sizes-are-equal-one-and-proof-is-empty" uses 12-byte roots); here every hash that
    # is not 32 bytes fails.
    assert holds is (not probe["wantErr"] and all_hashes_32([root1, root2], proof))


def test_the_one_probe_where_a_short_hash_is_refused_beyond_transparency_dev() -> None:
    differ = [
        p["file"]
        for p in VECTORS["consistency_probes"] + VECTORS["inclusion_probes"]
        if not p["wantErr"]
        and not all_hashes_32(
            [b64(p.get("root1", p.get("root"))), b64(p.get("root2", p.get("leafHash")))],
            [b64(h) for h in p["proof"] or []],
        )
    ]
    assert differ == ["testdata/consistency/additional/sizes-are-equal-one-and-proof-is-empty.json"]


def test_a_zero_byte_leaf_and_root_for_a_one_leaf_tree_fail() -> None:
    (probe,) = [
        p for p in VECTORS["inclusion_probes"] if p["file"].endswith("single-entry/empty-root-and-leaf.json")
    ]
    assert (probe["leafHash"], probe["root"], probe["treeSize"], probe["wantErr"]) == ("", "", 1, True)
    assert not merkle.verify_inclusion(0, 1, b"", [], b"")
    with pytest.raises(ValueError):
        merkle.root_from_inclusion(0, 1, b"", [])


@pytest.mark.parametrize("length", [0, 1, 31, 33, 64])
def test_hashes_of_any_length_but_32_fail(length: int) -> None:
    tree = merkle.Tree(LEAVES)
    bad = b"\x01" * length
    proof = tree.inclusion_proof(2, 5)
    assert merkle.verify_inclusion(2, 5, LEAVES[2], proof, tree.root(5))
    assert not merkle.verify_inclusion(2, 5, bad, proof, tree.root(5))
    assert not merkle.verify_inclusion(2, 5, LEAVES[2], [*proof[:-1], bad], tree.root(5))
    assert not merkle.verify_inclusion(2, 5, LEAVES[2], proof, bad)
    assert not merkle.verify_inclusion(0, 1, bad, [], bad)
    consistency = tree.consistency_proof(3, 7)
    assert merkle.verify_consistency(3, 7, consistency, tree.root(3), tree.root(7))
    assert not merkle.verify_consistency(3, 7, [bad, *consistency[1:]], tree.root(3), tree.root(7))
    assert not merkle.verify_consistency(3, 7, consistency, bad, tree.root(7))
    assert not merkle.verify_consistency(3, 7, consistency, tree.root(3), bad)
    assert not merkle.verify_consistency(2, 2, [], bad, bad)


def test_roots_and_nodes_are_the_published_ones() -> None:
    tree = merkle.Tree(LEAVES)
    assert [tree.root(n).hex() for n in range(9)] == VECTORS["root_hashes_hex"]
    for level, hashes in enumerate(VECTORS["node_hashes_hex"]):
        found = tree.hashes([(level, i) for i in range(len(hashes))])
        assert [found[(level, i)].hex() for i in range(len(hashes))] == hashes
    # append_leaves (what the sequencer stores) completes exactly those nodes, and no others.
    frontier, completed = merkle.append_leaves([], 0, LEAVES)
    stored = {node: h.hex() for node, h in completed}
    assert stored == {
        (lv, i): h for lv, hs in enumerate(VECTORS["node_hashes_hex"]) if lv for i, h in enumerate(hs)
    }
    assert frontier == [((3, 0), bytes.fromhex(VECTORS["root_hashes_hex"][8]))]


def test_proofs_are_the_published_happy_paths() -> None:
    tree = merkle.Tree(LEAVES)
    seen = 0
    for p in VECTORS["inclusion_probes"]:
        if p["file"].endswith("/happy-path.json"):
            assert b64(p["root"]) == tree.root(p["treeSize"]) and b64(p["leafHash"]) == LEAVES[p["leafIdx"]]
            proof = tree.inclusion_proof(p["leafIdx"], p["treeSize"])
            assert [base64.b64encode(h).decode() for h in proof] == (p["proof"] or [])
            seen += 1
    for p in VECTORS["consistency_probes"]:
        if p["file"].endswith("/happy-path.json"):
            assert (b64(p["root1"]), b64(p["root2"])) == (tree.root(p["size1"]), tree.root(p["size2"]))
            proof = tree.consistency_proof(p["size1"], p["size2"])
            assert [base64.b64encode(h).decode() for h in proof] == (p["proof"] or [])
            seen += 1
    assert seen == 10


# -- stored nodes answer as the RFC's recursion does ---------------------------------------------


def mth(d: list[bytes]) -> bytes:
    """RFC 6962 section 2.1, as written."""
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return d[0]
    k = 1 << ((len(d) - 1).bit_length() - 1)
    return merkle.node_hash(mth(d[:k]), mth(d[k:]))


def path(m: int, d: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]), section 2.1.1."""
    if len(d) == 1:
        return []
    k = 1 << ((len(d) - 1).bit_length() - 1)
    if m < k:
        return [*path(m, d[:k]), mth(d[k:])]
    return [*path(m - k, d[k:]), mth(d[:k])]


def subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b), section 2.1.2."""
    if m == len(d):
        return [] if b else [mth(d)]
    k = 1 << ((len(d) - 1).bit_length() - 1)
    if m <= k:
        return [*subproof(m, d[:k], b), mth(d[k:])]
    return [*subproof(m - k, d[k:], False), mth(d[:k])]


class Stored:
    """What the log keeps: leaves, and each perfect subtree once, as append_leaves completed it."""

    def __init__(self, leaves: list[bytes], batches: list[int]) -> None:
        self.nodes: dict[merkle.NodeId, bytes] = {}
        self.reads = 0
        frontier: list[tuple[merkle.NodeId, bytes]] = []
        size = 0
        for cut in [*batches, len(leaves)]:  # appended in batches, like sequencer passes
            batch = leaves[size:cut] if cut > size else []
            frontier, completed = merkle.append_leaves(frontier, size, batch)
            self.nodes.update(completed)
            size += len(batch)
        self.nodes.update({(0, i): h for i, h in enumerate(leaves)})

    def hashes(self, ids: Any) -> dict[merkle.NodeId, bytes]:
        self.reads += len(ids)
        return {i: self.nodes[i] for i in ids}


@cache
def leaves_of(n: int) -> list[bytes]:
    return [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=1, max_value=600).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.integers(0, n - 1),
            st.integers(1, n),
            st.integers(1, n),
            st.lists(st.integers(0, n), max_size=4).map(sorted),
        )
    )
)
def test_stored_nodes_give_the_roots_and_proofs_of_a_full_recomputation(
    case: tuple[int, int, int, int, list[int]],
) -> None:
    n, index, size_a, size_b, batches = case
    leaves = leaves_of(n)
    store = Stored(leaves, batches)
    old, new = min(size_a, size_b), max(size_a, size_b)
    index = index % new
    assert merkle.root_from(store, new) == mth(leaves[:new])
    assert merkle.inclusion_proof_from(store, index, new) == path(index, leaves[:new])
    expected = [] if old == new else subproof(old, leaves[:new], True)
    assert merkle.consistency_proof_from(store, old, new) == expected
    assert merkle.verify_inclusion(index, new, leaves[index], path(index, leaves[:new]), mth(leaves[:new]))
    if old < new:
        assert merkle.verify_consistency(old, new, expected, mth(leaves[:old]), mth(leaves[:new]))


def test_answers_read_o_log_n_nodes() -> None:
    n = 1_000_003
    store = Stored([], [])

    class Counting:
        reads = 0

        def hashes(self, ids: Any) -> dict[merkle.NodeId, bytes]:
            Counting.reads = max(Counting.reads, len(ids))
            return {i: store.nodes.get(i, b"\x00" * 32) for i in ids}

    source = Counting()
    bound = 2 * n.bit_length()
    for index in (0, 1, n // 2, n - 2, n - 1):
        merkle.inclusion_proof_from(source, index, n)
    for old in (1, 2, 3, 1 << 19, n - 1):
        merkle.consistency_proof_from(source, old, n)
    merkle.root_from(source, n)
    assert 0 < Counting.reads <= bound
