"""RFC 6962 Merkle trees (section 2.1): hashing, inclusion and consistency proofs, built from stored nodes.

Leaf hash = SHA-256(0x00 || data), node hash = SHA-256(0x01 || left || right). The tree over n
leaves splits at k, the largest power of two smaller than n. The empty tree's hash is SHA-256("").

Every hash the RFC's recursion asks for is MTH of a range of leaves that is either a perfect
subtree — 2^level leaves starting at a multiple of 2^level, named `(level, index)` as in
transparency-dev/merkle's compact ranges and the tiles of Trillian/Tessera — or a range running
to the tree's right edge, which is a few perfect subtrees of decreasing size folded right to left.
Once a perfect subtree is complete its hash never changes, so a log stores each one once and
answers a root, an inclusion proof or a consistency proof with O(log n) stored nodes
(`NodeSource`); `Tree` is the same over hashes held in memory.

Verification follows RFC 9162 sections 2.1.3.2 and 2.1.4.2, with the checks of
transparency-dev/merkle's `proof` package; every hash (leaf, root, proof element) must be 32 bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Protocol

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

NodeId = tuple[int, int]
"""(level, index): the perfect subtree over leaves [index * 2^level, (index + 1) * 2^level)."""


class MissingNode(LookupError):
    """A node a proof needs is not stored."""


def leaf_hash(data: bytes) -> bytes:
    """The hash of one log entry."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The hash of an interior node."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """k: the largest power of two smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


# -- which stored nodes answer what --------------------------------------------------------------


def range_nodes(begin: int, end: int) -> list[NodeId]:
    """The perfect subtrees whose right fold is MTH(D[begin:end]), largest first.

    Only for ranges the RFC's recursion reaches (a perfect subtree, or a range to the right edge
    whose start is aligned to its largest part); ValueError for any other.
    """
    if not 0 <= begin < end:
        raise ValueError(f"no leaves in [{begin}, {end})")
    nodes: list[NodeId] = []
    while begin < end:
        level = (end - begin).bit_length() - 1
        if begin & ((1 << level) - 1):
            raise ValueError(f"[{begin}, {end}) is not a range of an RFC 6962 tree")
        nodes.append((level, begin >> level))
        begin += 1 << level
    return nodes


def fold(hashes: Sequence[bytes]) -> bytes:
    """MTH of adjacent perfect subtrees of decreasing size, from their hashes (largest first)."""
    if not hashes:
        return EMPTY_ROOT
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def root_ranges(size: int) -> list[tuple[int, int]]:
    """The one range whose MTH is the root of the tree of `size` (none for the empty tree)."""
    if size < 0:
        raise ValueError(f"no tree of {size} leaves")
    return [(0, size)] if size else []


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """PATH(index, D[:size]) as ranges of leaves, bottom-up (RFC 6962 section 2.1.1)."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size}")
    path: list[tuple[int, int]] = []
    start, n = 0, size
    while n > 1:
        k = _split(n)
        if index < k:
            path.append((start + k, start + n))
            n = k
        else:
            path.append((start, start + k))
            index, start, n = index - k, start + k, n - k
    return path[::-1]


def consistency_ranges(old: int, new: int) -> list[tuple[int, int]]:
    """PROOF(old, D[:new]) as ranges of leaves (RFC 6962 section 2.1.2); empty when old == new."""
    if not 0 <= old <= new:
        raise ValueError(f"no consistency proof from {old} to {new}")
    if old in (0, new):
        return []
    proof: list[tuple[int, int]] = []
    start, n, complete = 0, new, True
    m = old
    while m != n:  # SUBPROOF(m, D[start:start+n], complete), unrolled; each step appends last
        k = _split(n)
        if m <= k:
            proof.append((start + k, start + n))
            n = k
        else:
            proof.append((start, start + k))
            m, start, n, complete = m - k, start + k, n - k, False
    if not complete:
        proof.append((start, start + n))
    return proof[::-1]


class NodeSource(Protocol):
    """Where perfect-subtree hashes are kept (a database table, or memory)."""

    def hashes(self, ids: Collection[NodeId]) -> Mapping[NodeId, bytes]:
        """The hashes of `ids`; MissingNode if one is not there."""
        ...


def _answer(source: NodeSource, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
    plans = [range_nodes(b, e) for b, e in ranges]
    wanted = {node for plan in plans for node in plan}
    found = source.hashes(wanted) if wanted else {}
    return [fold([found[node] for node in plan]) for plan in plans]


def root_from(source: NodeSource, size: int) -> bytes:
    """MTH of the first `size` leaves, from at most log2(size) + 1 stored nodes."""
    found = _answer(source, root_ranges(size))
    return found[0] if found else EMPTY_ROOT


def inclusion_proof_from(source: NodeSource, index: int, size: int) -> list[bytes]:
    """The audit path of leaf `index` in the tree of `size`, from O(log size) stored nodes."""
    return _answer(source, inclusion_ranges(index, size))


def consistency_proof_from(source: NodeSource, old: int, new: int) -> list[bytes]:
    """The consistency proof from the tree of `old` to the tree of `new`, from O(log new) nodes."""
    return _answer(source, consistency_ranges(old, new))


def append_leaves(
    frontier: Sequence[tuple[NodeId, bytes]], size: int, leaves: Iterable[bytes]
) -> tuple[list[tuple[NodeId, bytes]], list[tuple[NodeId, bytes]]]:
    """Append leaf hashes to a tree of `size` given its frontier (`range_nodes(0, size)` with hashes).

    Returns the new frontier and every perfect subtree of two or more leaves completed on the way
    (each to be stored once). A leaf is its own level-0 node and is not among them.
    """
    stack = list(frontier)
    completed: list[tuple[NodeId, bytes]] = []
    for offset, leaf in enumerate(leaves):
        node: tuple[NodeId, bytes] = ((0, size + offset), leaf)
        while stack and stack[-1][0][0] == node[0][0]:
            (level, index), left = stack.pop()
            node = ((level + 1, index >> 1), node_hash(left, node[1]))
            completed.append(node)
        stack.append(node)
    return stack, completed


# -- in memory -----------------------------------------------------------------------------------


class Tree:
    """Every level of the tree over `leaves` (leaf hashes), hashed once.

    The root of any prefix and any proof then take O(log n) lookups of perfect subtrees.
    Built bottom-up: nodes paired left to right; levels[L][i] is the perfect subtree (L, i)
    wherever it is complete.
    """

    def __init__(self, leaves: Sequence[bytes]) -> None:
        levels = [list(leaves)]
        while len(levels[-1]) > 1:
            below = levels[-1]
            levels.append([node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)])
        self._levels = levels
        self.size = len(leaves)

    def hashes(self, ids: Collection[NodeId]) -> dict[NodeId, bytes]:
        """NodeSource: the perfect subtrees asked for."""
        found: dict[NodeId, bytes] = {}
        for level, index in ids:
            if level >= len(self._levels) or not 0 <= index < len(self._levels[level]):
                raise MissingNode(f"no perfect subtree ({level}, {index}) in a tree of {self.size}")
            found[(level, index)] = self._levels[level][index]
        return found

    def _check(self, size: int) -> None:
        if not 0 <= size <= self.size:
            raise ValueError(f"no prefix of {size} leaves in a tree of {self.size}")

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first `size` leaves (all of them by default)."""
        n = self.size if size is None else size
        self._check(n)
        return root_from(self, n)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[:size]): the audit path of leaf `index` in the tree of the first `size`."""
        n = self.size if size is None else size
        self._check(n)
        return inclusion_proof_from(self, index, n)

    def consistency_proof(self, old: int, new: int | None = None) -> list[bytes]:
        """PROOF(old, D[:new]): that the tree of `old` leaves is a prefix of the tree of `new`."""
        n = self.size if new is None else new
        self._check(n)
        return consistency_proof_from(self, old, n)


def root(leaves: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes (not leaf data)."""
    return Tree(leaves).root()


def inclusion_proof(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PATH(index, D[n]): the audit path of leaf `index` in the tree over `leaves` (leaf hashes)."""
    return Tree(leaves).inclusion_proof(index)


# -- verification --------------------------------------------------------------------------------


def _hashes_ok(*hashes: bytes) -> None:
    for h in hashes:
        if not isinstance(h, bytes | bytearray) or len(h) != HASH_SIZE:
            raise ValueError(f"a hash is {HASH_SIZE} bytes, not {len(h)}")


def root_from_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root an inclusion proof leads to (RFC 9162 section 2.1.3.2); ValueError if malformed."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size}")
    _hashes_ok(leaf, *proof)
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            raise ValueError("proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ValueError("proof is shorter than the tree is deep")
    return r


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], expected_root: bytes
) -> bool:
    """Whether the proof shows `leaf` at `index` in the tree of `size` with `expected_root`."""
    try:
        _hashes_ok(expected_root)
        return root_from_inclusion(index, size, leaf, proof) == expected_root
    except ValueError:
        return False


def roots_from_consistency(
    old: int, new: int, proof: Sequence[bytes], old_root: bytes
) -> tuple[bytes, bytes]:
    """(old root, new root) a consistency proof leads to (RFC 9162 section 2.1.4.2).

    ValueError when the proof is malformed: sizes out of order, a proof from the empty tree
    (meaningless: every tree extends it), a proof where none is due, or the wrong length.
    """
    _hashes_ok(old_root, *proof)
    if not 0 <= old <= new:
        raise ValueError(f"no consistency proof from {old} to {new}")
    if old == new:
        if proof:
            raise ValueError("the sizes are equal, but the proof is not empty")
        return old_root, old_root
    if old == 0:
        raise ValueError("a consistency proof from the empty tree is meaningless")
    if not proof:
        raise ValueError("empty proof")
    path = list(proof)
    if old & (old - 1) == 0:  # a power of two: the old tree is a node of the new one
        path.insert(0, old_root)
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ValueError("proof is longer than the trees are deep")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ValueError("proof is shorter than the trees are deep")
    return fr, sr


def verify_consistency(old: int, new: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes) -> bool:
    """Whether the proof shows the tree of `old` with `old_root` is a prefix of the one with `new_root`."""
    try:
        _hashes_ok(new_root)
        fr, sr = roots_from_consistency(old, new, proof, old_root)
    except ValueError:
        return False
    return fr == old_root and sr == new_root
