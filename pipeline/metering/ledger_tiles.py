"""The ledger as C2SP tlog-tiles static files (checkpoint, Merkle tiles, entry bundles) any monitor can follow."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from pipeline.metering.ledger_sign import Checkpoint
from pipeline.metering.merkle import MerkleTree, leaf_hash, node_hash

TILE_WIDTH = 256  # hashes in a full tile (tile height 8)
MAX_ENTRY = 0xFFFF  # entry bundles prefix each entry with a big-endian uint16 length


class TileError(ValueError):
    """The published files disagree with the log (a fork or rewrite), or are unreadable."""


def tile_path(level: int | str, index: int, width: int = TILE_WIDTH) -> str:
    """`tile/<L>/<N>[.p/<W>]` with N in 3-digit groups, all but the last prefixed `x` (1234067 ->
    x001/x234/067); level "entries" names an entry bundle."""
    digits = f"{index:03d}"
    digits = "0" * (-len(digits) % 3) + digits
    groups = [digits[i:i + 3] for i in range(0, len(digits), 3)]
    name = "/".join([*(f"x{g}" for g in groups[:-1]), groups[-1]])
    return f"tile/{level}/{name}" + (f".p/{width}" if width < TILE_WIDTH else "")


def _subtree_root(hashes: Sequence[bytes]) -> bytes:
    """MTH of a full tile's 256 hashes (a perfect tree of height 8)."""
    level = list(hashes)
    while len(level) > 1:
        level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def tiles(leaves: Sequence[bytes], size: int) -> dict[str, bytes]:
    """Every hash tile (full and the partial ones) of the tree of the first `size` leaf hashes."""
    out: dict[str, bytes] = {}
    level, hashes = 0, list(leaves[:size])
    while hashes:
        full, rest = divmod(len(hashes), TILE_WIDTH)
        for n in range(full):
            out[tile_path(level, n)] = b"".join(hashes[n * TILE_WIDTH:(n + 1) * TILE_WIDTH])
        if rest:
            out[tile_path(level, full, rest)] = b"".join(hashes[full * TILE_WIDTH:])
        hashes = [_subtree_root(hashes[n * TILE_WIDTH:(n + 1) * TILE_WIDTH]) for n in range(full)]
        level += 1
    return out


def bundles(entries: Sequence[bytes], size: int) -> dict[str, bytes]:
    """Entry bundles of the first `size` entries: uint16 length-prefixed canonical entry bytes."""
    out: dict[str, bytes] = {}
    for n in range(0, size, TILE_WIDTH):
        chunk = entries[n:min(n + TILE_WIDTH, size)]
        for i, e in enumerate(chunk):
            if len(e) > MAX_ENTRY:
                raise TileError(f"entry {n + i} is {len(e)} bytes; tlog-tiles entry bundles hold at most {MAX_ENTRY}")
        out[tile_path("entries", n // TILE_WIDTH, len(chunk))] = b"".join(len(e).to_bytes(2, "big") + e
                                                                         for e in chunk)
    return out


def publish(out_dir: Path, checkpoint: Checkpoint, entries: Sequence[bytes]) -> list[str]:
    """Write `checkpoint` and the tiles and bundles of its tree into `out_dir` (a static web root). Full tiles
    are immutable: one already published with other bytes means the log was rewritten, and nothing is written.
    Returns the paths written."""
    size = checkpoint.tree_size
    if len(entries) < size:
        raise TileError(f"the checkpoint signs {size} entries but only {len(entries)} were given")
    leaves = [leaf_hash(e) for e in entries[:size]]
    if MerkleTree(leaves).root().hex() != checkpoint.root_hash:
        raise TileError("the entries do not hash to the checkpoint's root: run `microdrama ledger verify`")
    files = {**tiles(leaves, size), **bundles(entries, size)}
    for rel, data in files.items():
        old = out_dir / rel
        if ".p/" not in rel and old.is_file() and old.read_bytes() != data:
            raise TileError(f"{old} was published with other bytes: the log no longer extends what it published "
                            "(rolled back, forked or rewritten)")
    written = []
    for rel, data in {**files, "checkpoint": checkpoint.note.encode()}.items():
        path = out_dir / rel
        if path.is_file() and path.read_bytes() == data:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        written.append(rel)
    return written


def read_log(root: Path, checkpoint: Checkpoint | None = None) -> tuple[Checkpoint, list[bytes], list[bytes]]:
    """(checkpoint, leaf hashes, entries) of a published log, every entry checked against its level-0 tile and
    the tree against the checkpoint's root (its signature is the caller's to check)."""
    cp = checkpoint or Checkpoint.parse((root / "checkpoint").read_text(encoding="utf-8"))
    size, leaves, entries = cp.tree_size, [], []
    for n in range(0, size, TILE_WIDTH):
        width = min(TILE_WIDTH, size - n)
        tile = _read(root, tile_path(0, n // TILE_WIDTH, width), n // TILE_WIDTH, 0, width)
        hashes = [tile[i:i + 32] for i in range(0, len(tile), 32)]
        if len(hashes) != width:
            raise TileError(f"{tile_path(0, n // TILE_WIDTH, width)}: holds {len(hashes)} hashes, not {width}")
        data = _read(root, tile_path("entries", n // TILE_WIDTH, width), n // TILE_WIDTH, "entries", width)
        got = _unbundle(data, n)
        if len(got) != width or any(leaf_hash(e) != h for e, h in zip(got, hashes)):
            raise TileError(f"entry bundle {n // TILE_WIDTH}: its entries do not hash to the level-0 tile")
        leaves += hashes
        entries += got
    if MerkleTree(leaves).root().hex() != cp.root_hash:
        raise TileError("the published tiles do not hash to the checkpoint's root")
    return cp, leaves, entries


def _read(root: Path, rel: str, index: int, level: int | str, width: int) -> bytes:
    """A tile, or the full tile when the partial one was replaced by it (trimmed to `width`)."""
    path = root / rel
    if path.is_file():
        return path.read_bytes()
    full = root / tile_path(level, index)
    if full.is_file():
        data = full.read_bytes()
        return data[:width * 32] if level != "entries" else _rebundle(_unbundle(data, index * TILE_WIDTH)[:width])
    raise TileError(f"{rel} is not published under {root}")


def _unbundle(data: bytes, first: int) -> list[bytes]:
    out, i = [], 0
    while i < len(data):
        if i + 2 > len(data):
            raise TileError(f"entry bundle starting at entry {first}: truncated")
        n = int.from_bytes(data[i:i + 2], "big")
        out.append(data[i + 2:i + 2 + n])
        i += 2 + n
    if i != len(data):
        raise TileError(f"entry bundle starting at entry {first}: truncated")
    return out


def _rebundle(entries: list[bytes]) -> bytes:
    return b"".join(len(e).to_bytes(2, "big") + e for e in entries)
