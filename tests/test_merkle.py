"""RFC 6962 Merkle tree: published vectors (transparency-dev/merkle, C2SP CCTV) and brute-force cross-checks."""
from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path

import pytest

from pipeline.metering import merkle
from pipeline.metering.merkle import MerkleTree, leaf_hash, node_hash

# Sources are recorded in tests/data/rfc6962/README.md:
#   https://github.com/transparency-dev/merkle (proof/verify_test.go, rfc6962/rfc6962_test.go, testdata/)
#   https://github.com/C2SP/CCTV/tree/main/merkle/testdata
DATA = Path(__file__).parent / "data" / "rfc6962"
GO = json.loads((DATA / "transparency-dev" / "go_test_vectors.json").read_text())
TD = json.loads((DATA / "transparency-dev" / "testdata.json").read_text())


def _cctv(name: str) -> list[dict]:
    return json.loads((DATA / "cctv" / f"{name}.json").read_text())


def b64(s: str) -> bytes:
    return base64.b64decode(s)


def hx(s: str) -> bytes:
    return bytes.fromhex(s)


GO_LEAVES = [leaf_hash(hx(d)) for d in GO["leaves"]]


def _reference_root(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1 MTH, written as literally as possible."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return node_hash(_reference_root(leaves[:k]), _reference_root(leaves[k:]))


def test_hasher_vectors():
    h = GO["hasher"]
    assert merkle.EMPTY_ROOT.hex() == h["empty_root"] == merkle.root([]).hex()
    assert leaf_hash(b"").hex() == h["empty_leaf"]
    assert leaf_hash(b"L123456").hex() == h["leaf_L123456"]
    assert node_hash(b"N123", b"N456").hex() == h["node_N123_N456"]


@pytest.mark.parametrize("size", range(1, 9))
def test_go_roots(size):
    assert merkle.root(GO_LEAVES[:size]).hex() == GO["roots"][size - 1]


@pytest.mark.parametrize("case", GO["inclusion"], ids=lambda c: f"{c['leaf']}-of-{c['size']}")
def test_go_inclusion_proofs(case):
    index, size = case["leaf"] - 1, case["size"]
    proof = merkle.inclusion_proof(index, size, GO_LEAVES)
    assert [p.hex() for p in proof] == case["proof"]
    assert merkle.verify_inclusion(index, size, GO_LEAVES[index], proof, hx(GO["roots"][size - 1]))


@pytest.mark.parametrize("case", GO["consistency"], ids=lambda c: f"{c['size1']}-to-{c['size2']}")
def test_go_consistency_proofs(case):
    m, n = case["size1"], case["size2"]
    proof = merkle.consistency_proof(m, n, GO_LEAVES)
    assert [p.hex() for p in proof] == case["proof"]
    assert merkle.verify_consistency(m, n, hx(GO["roots"][m - 1]), hx(GO["roots"][n - 1]), proof)


@pytest.mark.parametrize("case", TD["inclusion"], ids=lambda c: c["file"])
def test_transparency_dev_inclusion_files(case):
    proof = [b64(p) for p in case["proof"] or []]
    ok = merkle.verify_inclusion(case["leafIdx"], case["treeSize"], b64(case["leafHash"]), proof, b64(case["root"]))
    assert ok is not case["wantErr"]


@pytest.mark.parametrize("case", TD["consistency"], ids=lambda c: c["file"])
def test_transparency_dev_consistency_files(case):
    proof = [b64(p) for p in case["proof"] or []]
    ok = merkle.verify_consistency(case["size1"], case["size2"], b64(case["root1"]), b64(case["root2"]), proof)
    assert ok is not case["wantErr"]


def test_cctv_tree_heads():
    tree = MerkleTree()
    for row in _cctv("merkle_tree"):
        assert leaf_hash(row["leaf_data"].encode()) == b64(row["leaf_hash"])
        tree.append(b64(row["leaf_hash"]))
        assert tree.root() == b64(row["root_hash"])


CCTV_LEAVES = [b64(r["leaf_hash"]) for r in _cctv("merkle_tree")]


@pytest.mark.parametrize("case", _cctv("inclusion-valid"), ids=lambda c: f"{c['leaf_index']}-of-{c['tree_size']}")
def test_cctv_inclusion_valid(case):
    i, n = case["leaf_index"], case["tree_size"]
    path = [b64(p) for p in case["inclusion_path"]]
    assert merkle.inclusion_proof(i, n, CCTV_LEAVES) == path  # generation
    assert merkle.verify_inclusion(i, n, b64(case["leaf_hash"]), path, b64(case["root_hash"]))


@pytest.mark.parametrize("case", _cctv("inclusion-invalid"), ids=lambda c: c["comment"])
def test_cctv_inclusion_invalid(case):
    path = [b64(p) for p in case["inclusion_path"]]
    assert not merkle.verify_inclusion(case["leaf_index"], case["tree_size"], b64(case["leaf_hash"]),
                                       path, b64(case["root_hash"]))


@pytest.mark.parametrize("case", _cctv("consistency-valid"), ids=lambda c: f"{c['old_size']}-to-{c['new_size']}")
def test_cctv_consistency_valid(case):
    m, n = case["old_size"], case["new_size"]
    path = [b64(p) for p in case["consistency_path"]]
    assert merkle.consistency_proof(m, n, CCTV_LEAVES) == path  # generation
    assert merkle.verify_consistency(m, n, b64(case["old_root"]), b64(case["new_root"]), path)


@pytest.mark.parametrize("case", _cctv("consistency-invalid"), ids=lambda c: f"{c['old_size']}-to-{c['new_size']}")
def test_cctv_consistency_invalid(case):
    path = [b64(p) for p in case["consistency_path"]]
    assert not merkle.verify_consistency(case["old_size"], case["new_size"], b64(case["old_root"]),
                                         b64(case["new_root"]), path)


def test_every_proof_up_to_33_leaves_round_trips_and_rejects_bit_flips():
    leaves = [leaf_hash(str(i).encode()) for i in range(33)]
    tree = MerkleTree(leaves)
    for n in range(1, 34):
        r = tree.root(n)
        assert r == _reference_root(leaves[:n])
        for i in range(n):
            proof = tree.inclusion_proof(i, n)
            assert merkle.verify_inclusion(i, n, leaves[i], proof, r)
            assert not merkle.verify_inclusion(i, n, leaves[(i + 1) % 33], proof, r)
        for m in range(0, n + 1):
            proof = tree.consistency_proof(m, n)
            assert merkle.verify_consistency(m, n, tree.root(m), r, proof)
            if proof:
                bad = [bytes([proof[0][0] ^ 1]) + proof[0][1:], *proof[1:]]
                assert not merkle.verify_consistency(m, n, tree.root(m), r, bad)


def test_getter_and_sequence_agree():
    leaves = [leaf_hash(bytes([i])) for i in range(11)]
    assert merkle.inclusion_proof(3, 11, leaves.__getitem__) == merkle.inclusion_proof(3, 11, leaves)
    assert merkle.consistency_proof(5, 11, leaves.__getitem__) == merkle.consistency_proof(5, 11, leaves)


def test_bad_arguments_raise_with_the_range():
    tree = MerkleTree([leaf_hash(b"x")])
    with pytest.raises(ValueError, match="outside"):
        tree.inclusion_proof(1, 1)
    with pytest.raises(ValueError, match="outside"):
        tree.root(2)
    with pytest.raises(ValueError, match="32 bytes"):
        tree.append(b"short")


def test_100k_leaves_is_fast():
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(100_000)]
    t0 = time.perf_counter()
    tree = MerkleTree(leaves)
    r = tree.root()
    for i in (0, 4_242, 99_999):
        assert merkle.verify_inclusion(i, 100_000, leaves[i], tree.inclusion_proof(i), r)
    assert merkle.verify_consistency(77_777, 100_000, tree.root(77_777), r, tree.consistency_proof(77_777))
    assert time.perf_counter() - t0 < 2.0
