"""RFC 6962 Merkle tree hashing (section 2.1) and inclusion proofs (2.1.1).

Leaf hash = SHA-256(0x00 || data), node hash = SHA-256(0x01 || left || right). The tree over n
leaves splits at k, the largest power of two smaller than n. The empty tree's hash is SHA-256("").
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def leaf_hash(data: bytes) -> bytes:
    """The hash of one log entry."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The hash of an interior node."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    k = 1
    while k << 1 < n:
        k <<= 1
    return k


class Tree:
    """Every level of the tree over `leaves` (leaf hashes), hashed once.

    The root of any prefix and any inclusion proof then take O(log² n) lookups, where walking
    the leaves again for each (the RFC's recursion, as written) took O(n) hashes each time.
    Built bottom-up: nodes paired left to right, an unpaired last node moved up unchanged,
    which is the same tree as RFC 6962's split at the largest power of two.
    """

    def __init__(self, leaves: Sequence[bytes]) -> None:
        levels = [list(leaves)]
        while len(levels[-1]) > 1:
            below = levels[-1]
            above = [node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
            if len(below) % 2:
                above.append(below[-1])
            levels.append(above)
        self._levels = levels
        self.size = len(leaves)

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first `size` leaves (all of them by default)."""
        n = self.size if size is None else size
        if not 0 <= n <= self.size:
            raise ValueError(f"no prefix of {n} leaves in a tree of {self.size}")
        return self._subtree(0, n) if n else hashlib.sha256(b"").digest()

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[:size]): the audit path of leaf `index` in the tree of the first `size`."""
        n = self.size if size is None else size
        if not 0 <= index < n <= self.size:
            raise ValueError(f"leaf {index} is not in a tree of {n}")
        path: list[bytes] = []
        start = 0
        while n > 1:  # from the top down; the path lists siblings from the bottom up
            k = _split(n)
            if index < k:
                path.append(self._subtree(start + k, n - k))
                n = k
            else:
                path.append(self._subtree(start, k))
                index, start, n = index - k, start + k, n - k
        return path[::-1]

    def _subtree(self, start: int, n: int) -> bytes:
        # MTH(D[start:start + n]) for a range the RFC's recursion reaches: a whole aligned block
        # of 2^level leaves is one stored node; anything else splits as the RFC splits it.
        if n & (n - 1) == 0 and start % n == 0:
            level = n.bit_length() - 1
            return self._levels[level][start >> level]
        k = _split(n)
        return node_hash(self._subtree(start, k), self._subtree(start + k, n - k))


def root(leaves: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes (not leaf data)."""
    return Tree(leaves).root()


def inclusion_proof(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PATH(index, D[n]): the audit path of leaf `index` in the tree over `leaves` (leaf hashes)."""
    return Tree(leaves).inclusion_proof(index)


def root_from_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root an inclusion proof leads to (RFC 9162 section 2.1.3.2); ValueError if malformed."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size}")
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
        return root_from_inclusion(index, size, leaf, proof) == expected_root
    except ValueError:
        return False
