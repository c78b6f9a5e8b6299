"""Full ledger audit: recompute every leaf, link and root from stored bytes and check every signed checkpoint."""
from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from typing import Any
from dataclasses import dataclass, field

import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from pipeline.metering.ledger_sign import Checkpoint, key_id
from pipeline.metering.ledger_store import CheckpointRow, Row
from pipeline.metering.merkle import MerkleTree, leaf_hash

GENESIS_PREV = "0" * 64  # `prev` of entry 0
ENTRY_FIELDS = ("v", "index", "kind", "key", "appended_at", "prev", "body")
MAX_PROBLEMS = 200


@dataclass
class VerifyReport:
    """The outcome of `Ledger.verify`: every problem found, and the first entry that cannot be trusted."""

    ok: bool
    first_bad_index: int | None
    problems: list[str]
    size: int  # entries stored
    root: str  # root hash (hex) recomputed from the stored bytes
    checkpoints_checked: int = 0
    key_id: str | None = None  # signed-note key id of the key the checkpoints were checked against
    signed_size: int = 0  # entries 0..signed_size-1 are covered by a valid signed checkpoint
    first_bad_range: tuple[int, int] | None = None  # (lo, hi): the first bad entry is in lo..hi-1 (rebuilt chain)
    held_checked: int = 0  # checkpoints held elsewhere (--trusted) that this log was shown to extend
    warnings: list[str] = field(default_factory=list)

    @property
    def unsigned(self) -> tuple[int, int] | None:
        """(first, last) entries no signed checkpoint covers yet: not evidence until one does."""
        return (self.signed_size, self.size - 1) if self.size > self.signed_size else None

    def summary(self) -> str:
        tail = (f"; UNSIGNED: entries {self.unsigned[0]}..{self.unsigned[1]} are after the last checkpoint "
                "(not evidence until `microdrama ledger checkpoint` covers them)") if self.unsigned else ""
        if self.ok:
            by = f" with key {self.key_id}" if self.key_id else ""
            held = f", extends {self.held_checked} held checkpoint(s)" if self.held_checked else ""
            return (f"ledger OK: {self.size} entries, root {self.root}, "
                    f"{self.checkpoints_checked} signed checkpoint(s) verified{by}{held}{tail}")
        if self.first_bad_range and self.first_bad_index == self.first_bad_range[0]:
            lo, hi = self.first_bad_range
            where = f"first bad entry: one of entries {lo}..{hi - 1}"
        elif self.first_bad_index is not None:
            where = f"first bad entry: {self.first_bad_index}"
        else:
            where = "entries intact"
        return f"ledger TAMPERED ({where}); {len(self.problems)} problem(s){tail}"


@dataclass
class _Seen:
    """What pass 1 learnt about one stored row."""

    idx: int
    leaf: bytes
    doc_prev: str | None
    bad: bool


@dataclass
class _Findings:
    items: list[tuple[float, int, str]] = field(default_factory=list)  # (entry index or inf, order, text)
    strong: list[int] = field(default_factory=list)  # entry indexes pinpointed exactly
    weak: list[tuple[int, int]] = field(default_factory=list)  # (lower bound, checkpoint size) of a bad root
    shifted: list[tuple[int, int]] = field(default_factory=list)  # (stored index, index the entry records)

    def add(self, text: str, index: int | None = None) -> None:
        if index is not None:
            self.strong.append(index)
        self.items.append((math.inf if index is None else index, len(self.items), text))

    def problems(self) -> list[str]:
        """Entry problems in index order (the first bad entry first), then the others."""
        texts = [text for _, _, text in sorted(self.items)]
        extra = len(texts) - MAX_PROBLEMS
        return texts[:MAX_PROBLEMS] + ([f"... and {extra} more"] if extra > 0 else [])

    def first_bad(self) -> int | None:
        strong = min(self.strong, default=None)
        cands = [lo for lo, size in self.weak if strong is None or strong >= size]
        both = cands + ([strong] if strong is not None else [])
        return min(both, default=None)

    def first_bad_range(self) -> tuple[int, int] | None:
        """The narrowest (lo, hi) a bad root pins the first bad entry to, when no exact entry comes first."""
        first = self.first_bad()
        ranges = [(lo, size) for lo, size in self.weak if lo == first and first not in self.strong]
        return min(ranges, key=lambda r: r[1], default=None)


def _check_row(row: Row, f: _Findings) -> _Seen:
    """Self-consistency of one row: stored hash, canonical form, and the columns against the hashed body."""
    leaf = leaf_hash(row.canonical)
    n0 = len(f.strong)
    if leaf.hex() != row.leaf_hash:
        f.add(f"entry {row.idx}: stored leaf hash is not the hash of its stored bytes (body or hash altered)", row.idx)
    doc = _parse(row, f)
    prev = doc.get("prev") if isinstance(doc, dict) else None
    if isinstance(doc, dict):
        if doc.get("index") != row.idx:
            _misplaced(row.idx, doc.get("index"), f)
        for col, name in (("kind", "kind"), ("idempotency_key", "key"), ("appended_at", "appended_at")):
            if doc.get(name) != getattr(row, col):
                f.add(f"entry {row.idx}: column {col} differs from the hashed entry (altered)", row.idx)
    return _Seen(row.idx, leaf, prev if isinstance(prev, str) else None, len(f.strong) > n0)


def _misplaced(idx: int, recorded: object, f: _Findings) -> None:
    f.strong.append(idx)
    if isinstance(recorded, int) and not isinstance(recorded, bool):
        f.shifted.append((idx, recorded))
    else:
        f.add(f"entry {idx}: records index {recorded!r} (altered)", idx)


def _report_shifts(f: _Findings) -> None:
    """One problem per run of rows displaced by the same amount, rather than one per row."""
    runs: list[list[tuple[int, int]]] = []
    for idx, rec in f.shifted:
        if runs and runs[-1][-1][0] + 1 == idx and runs[-1][-1][0] - runs[-1][-1][1] == idx - rec:
            runs[-1].append((idx, rec))
        else:
            runs.append([(idx, rec)])
    for run in runs:
        (a, rec_a), (b, _) = run[0], run[-1]
        if a == b:
            f.add(f"entry {a}: records index {rec_a} but is stored at {a} (rows deleted, reordered, moved or "
                  "inserted)", a)
        else:
            d = rec_a - a
            why = (f"{d} higher than its position (an earlier row was deleted)" if d > 0
                   else f"{-d} lower than its position (a row was inserted before them)")
            f.add(f"entries {a}..{b}: each records an index {why}", a)


def _parse(row: Row, f: _Findings) -> dict | None:
    try:
        doc, canonical = parse_canonical(row.canonical)
    except (UnicodeDecodeError, ValueError):
        f.add(f"entry {row.idx}: stored bytes are not JSON (altered)", row.idx)
        return None
    if not isinstance(doc, dict) or any(k not in doc for k in ENTRY_FIELDS):
        f.add(f"entry {row.idx}: stored entry lacks the fields {ENTRY_FIELDS} (altered)", row.idx)
        return None
    if not canonical:
        f.add(f"entry {row.idx}: stored bytes are not RFC 8785 canonical JSON (altered)", row.idx)
    return doc


MAX_SAFE_INT = 2**53 - 1
_HIGH_PLANE = re.compile(rb"[\xee-\xff]")  # UTF-8 lead bytes of U+E000 and above


def parse_canonical(data: bytes) -> tuple[object, bool]:
    """Parse JSON bytes and tell whether they are exactly RFC 8785 canonical. The common case is proved
    with the C json encoder (same escapes, same key order below U+E000, floats checked literal by literal);
    anything else falls back to the reference `rfc8785` encoder."""
    odd: list[str] = []

    def number(text: str) -> float:
        x = float(text)
        plain = "e" not in text and "E" not in text and not text.endswith(".0") and repr(x) == text
        if not plain and _es6(x) != text:
            odd.append(text)
        return x

    def integer(text: str) -> int | float:
        n = int(text)
        if abs(n) <= MAX_SAFE_INT:
            return n
        return number(text)  # JSON numbers are doubles: 1e20 is written 100000000000000000000

    doc = json.loads(data, parse_float=number, parse_int=integer)
    if odd:
        return doc, False
    if not _HIGH_PLANE.search(data):  # no code point >= U+E000, where UTF-16 and code-point key order differ
        try:
            fast = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
            if fast.encode() == data:
                return doc, True
        except (ValueError, UnicodeEncodeError):
            pass
    try:
        return doc, rfc8785.dumps(doc) == data
    except rfc8785.CanonicalizationError:
        return doc, False


def _es6(x: float) -> str | None:
    try:
        return rfc8785.dumps(x).decode()
    except rfc8785.CanonicalizationError:
        return None


def _check_links(seen: list[_Seen], f: _Findings) -> None:
    """Each entry names the leaf hash of its predecessor; a broken link says which row was touched."""
    where = {s.leaf: s.idx for s in seen}
    for k, s in enumerate(seen):
        expected_idx = seen[k - 1].idx + 1 if k else 0
        if s.idx != expected_idx:
            gone = f"entries {expected_idx}..{s.idx - 1}" if s.idx - 1 > expected_idx else f"entry {expected_idx}"
            f.add(f"entry {expected_idx}: missing — {gone} deleted", expected_idx)
            continue
        if s.doc_prev is None:
            continue
        want = seen[k - 1].leaf.hex() if k else GENESIS_PREV
        if s.doc_prev == want:
            continue
        _blame_link(seen, k, where, f)


def _blame_link(seen: list[_Seen], k: int, where: dict[bytes, int], f: _Findings) -> None:
    """Entry k does not link to entry k-1: decide which row was touched. Its link skips k-1 -> k-1 was
    inserted; it links to another stored entry -> k was moved; k-1 or k is itself inconsistent -> already
    reported; entry k+1 does not link to k either -> k was forged; otherwise k-1 was altered and re-hashed."""
    s = seen[k]
    linked = where.get(bytes.fromhex(s.doc_prev)) if _is_hex(s.doc_prev) else None
    if k == 0:
        if not s.bad:
            f.add(f"entry {s.idx}: does not link to the start of the log (earlier entries deleted)", s.idx)
        return
    before, after = seen[k - 1], seen[k + 1] if k + 1 < len(seen) else None
    if before.bad:
        return  # already pinpointed: the predecessor's bytes changed
    skipped = seen[k - 2].leaf.hex() if k >= 2 else GENESIS_PREV
    if s.doc_prev == skipped:
        target = f"entry {seen[k - 2].idx}" if k >= 2 else "the start of the log"
        f.add(f"entry {before.idx}: was inserted — entry {s.idx} links straight to {target}", before.idx)
    elif linked is not None and linked != s.idx:
        f.add(f"entry {s.idx}: is out of place — it was appended right after entry {linked} "
              "(rows reordered or moved)", s.idx)
    elif s.bad:
        return  # already pinpointed: this row's own bytes are inconsistent
    elif after is not None and after.doc_prev not in (None, s.leaf.hex()):
        f.add(f"entry {s.idx}: forged — it does not link to entry {before.idx} and entry {after.idx} does not "
              "link to it", s.idx)
    else:
        f.add(f"entry {before.idx}: its hash is not the one entry {s.idx} recorded when it was appended "
              f"(entry {before.idx} altered and re-hashed, or entry {s.idx} forged)", before.idx)


def _is_hex(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def _check_checkpoints(tree: MerkleTree, next_idx: int, cps: list[CheckpointRow],
                       public: Any, origin: str, f: _Findings, good: list[int]) -> int:
    """Every stored checkpoint must be signed by the pinned key for this log and match the rebuilt tree; the
    sizes that match go into `good`."""
    if cps and public is None:
        f.add(f"cannot check checkpoint signatures: no key is pinned for {origin} (pass --pubkey VKEY, set "
              "$MICRODRAMA_LEDGER_PUBKEY, or `microdrama ledger pin VKEY`; a ledger.pub beside the database is "
              "never trusted)")
        return 0
    checked = 0
    for row in cps:
        cp = _signed(row, public, origin, f)
        if cp is None:
            continue
        checked += 1
        if cp.tree_size > next_idx:
            f.add(f"entry {next_idx}: missing — checkpoint #{row.id} signed {cp.tree_size} entries but the log "
                  f"ends at {next_idx - 1} (entries {next_idx}..{cp.tree_size - 1} deleted)", next_idx)
        elif cp.tree_size > tree.size:
            f.add(f"checkpoint #{row.id}: signed {cp.tree_size} entries but only {tree.size} are stored "
                  "(see the missing entries above)")
        elif tree.root(cp.tree_size).hex() != cp.root_hash:
            lo = max(s for s in good if s <= cp.tree_size)
            f.weak.append((lo, cp.tree_size))
            f.add(f"checkpoint #{row.id}: the stored entries 0..{cp.tree_size - 1} do not hash to its signed root "
                  f"(something in entries {lo}..{cp.tree_size - 1} changed)")
        else:
            good.append(cp.tree_size)
    return checked


def _signed(row: CheckpointRow, public: Any, origin: str, f: _Findings) -> Checkpoint | None:
    try:
        cp = Checkpoint.parse(row.note, id=row.id)
    except ValueError as e:
        f.add(f"checkpoint #{row.id}: malformed note ({e})")
        return None
    bad = public.problems(cp)
    if cp.origin != origin:
        bad.append(f"is for log {cp.origin!r}, not this ledger {origin!r}")
    if (row.tree_size, row.root_hash, row.key_id) != (cp.tree_size, cp.root_hash, cp.key_id):
        bad.append("its size/root/key columns differ from its signed note (altered)")
    for text in bad:
        f.add(f"checkpoint #{row.id}: rejected — {text}")
    return None if bad else cp


def _check_held(tree: MerkleTree, held: Iterable[Checkpoint], public: Any, origin: str, trust: Any,
                f: _Findings, good: list[int]) -> int:
    """Checkpoints held elsewhere (an auditor's copy, a witness's state, a claim packet): this log must extend
    each of them, so a rollback, a fork or a re-signed rewrite shows here even when every stored checkpoint
    was replaced to match."""
    from pipeline.metering.ledger_trust import witness_problems

    checked = 0
    for n, cp in enumerate(held, 1):
        name = f"held checkpoint {n} (size {cp.tree_size})"
        bad = ["no key is pinned to check it with"] if public is None else public.problems(cp)
        if cp.origin != origin:
            bad.append(f"is for log {cp.origin!r}, not this ledger {origin!r}")
        bad += witness_problems(cp, trust) if trust is not None else []
        if bad:
            f.add(f"{name}: rejected — {'; '.join(bad)}")
            continue
        checked += 1
        if cp.tree_size > tree.size:
            f.add(f"entry {tree.size}: missing — {name} signed {cp.tree_size} entries but the log holds "
                  f"{tree.size} (rolled back: entries {tree.size}..{cp.tree_size - 1} deleted)", tree.size)
        elif tree.root(cp.tree_size).hex() != cp.root_hash:
            lo = max(s for s in good if s <= cp.tree_size)
            f.weak.append((lo, cp.tree_size))
            f.add(f"{name}: this log does not extend it — entries 0..{cp.tree_size - 1} no longer hash to its "
                  f"signed root (something in entries {lo}..{cp.tree_size - 1} was rewritten: a fork, or a "
                  "rewrite re-signed with the log's key)")
        else:
            good.append(cp.tree_size)
    return checked


def _check_negative(rows: Iterable[Row], f: _Findings) -> list[Row]:
    """Rows stored at a negative index are outside the tree: report each, keep the rest."""
    kept = []
    for row in rows:
        if row.idx < 0:
            f.add(f"entry {row.idx}: stored at a negative index, outside the log (a forged row; it holds the "
                  f"idempotency key {row.idempotency_key!r}, so a genuine entry with that key could not be "
                  "appended)", row.idx)
        else:
            kept.append(row)
    return kept


def verify_ledger(rows: Iterable[Row], checkpoints: list[CheckpointRow], public: Any, origin: str,
                  held: Iterable[Checkpoint] = (), trust: Any = None, warnings: Iterable[str] = ()) -> VerifyReport:
    """Audit stored rows and checkpoints without trusting any stored hash, index or column. `public` is a
    LogVerifier (pinned key) or None; `held` are checkpoints kept elsewhere the log must extend; `trust`
    adds the witness cosignature rules for held checkpoints."""
    if isinstance(public, Ed25519PublicKey):
        from pipeline.metering.ledger_trust import LogVerifier
        public = LogVerifier(public, None, "argument")
    f = _Findings()
    seen = [_check_row(row, f) for row in _check_negative(rows, f)]
    _check_links(seen, f)
    tree = MerkleTree([s.leaf for s in seen])
    good = [0]
    checked = _check_checkpoints(tree, seen[-1].idx + 1 if seen else 0, checkpoints, public, origin, f, good)
    held_checked = _check_held(tree, held, public, origin, trust, f, good)
    _report_shifts(f)
    problems = f.problems()
    kid = key_id(public.public, public.name or origin) if public is not None else None
    return VerifyReport(ok=not problems, first_bad_index=f.first_bad(), problems=problems, size=tree.size,
                        root=tree.root().hex(), checkpoints_checked=checked, key_id=kid,
                        signed_size=min(max(good), tree.size), first_bad_range=f.first_bad_range(),
                        held_checked=held_checked, warnings=list(warnings))
