"""A witness: cosigns a log's checkpoint only after checking it extends the last one it cosigned (kept in its own
state folder), so a rollback, fork or re-signed rewrite shows once it has seen a checkpoint."""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pipeline.metering import merkle
from pipeline.metering.ledger_sign import Checkpoint, _create_key
from pipeline.metering.ledger_trust import LogVerifier, cosign, cosignature_vkey

KEY_FILE = "witness.key"


class WitnessError(ValueError):
    """The witness refuses to cosign; the message says why (a fork, a rollback, a bad signature)."""


@dataclass(frozen=True)
class Witness:
    """A witness named `name` (a schema-less URL such as district.example/witness) keeping its key and the last
    cosigned checkpoint of each log under `state`."""

    name: str
    state: Path

    def _private(self) -> Ed25519PrivateKey:
        path = self.state / KEY_FILE
        if not path.exists():
            _create_key(path)
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise WitnessError(f"{path} is not an Ed25519 private key")
        return key

    @property
    def vkey(self) -> str:
        """The cosignature verifier key (type 0x04) a holder pins: `microdrama ledger pin --witness VKEY`."""
        return cosignature_vkey(self.name, self._private().public_key())

    def _seen_path(self, origin: str) -> Path:
        return self.state / "logs" / (hashlib.sha256(origin.encode()).hexdigest()[:32] + ".checkpoint")

    def last_seen(self, origin: str) -> Checkpoint | None:
        path = self._seen_path(origin)
        return Checkpoint.parse(path.read_text(encoding="utf-8")) if path.is_file() else None

    def cosign(self, cp: Checkpoint, log_key: LogVerifier, leaves: list[bytes] | None = None,
               proof: list[bytes] | None = None, now: int | None = None) -> Checkpoint:
        """Check `cp` (log signature, and consistency with the last checkpoint seen from its log, by `proof` or
        by the full list of `leaves`), then cosign it and remember it. Raises WitnessError when it may not."""
        bad = log_key.problems(cp)
        if bad:
            raise WitnessError(f"checkpoint of {cp.origin} (size {cp.tree_size}): {'; '.join(bad)}")
        if leaves is not None and merkle.MerkleTree(leaves[:cp.tree_size]).root().hex() != cp.root_hash:
            raise WitnessError(f"the log's entries do not hash to its checkpoint of size {cp.tree_size}")
        old = self.last_seen(cp.origin)
        if old is not None:
            self._check_extends(old, cp, leaves, proof)
        signed = cp.with_signature(cosign(self._private(), self.name, cp, int(now if now is not None else time.time())))
        if old is None or cp.tree_size >= old.tree_size:
            path = self._seen_path(cp.origin)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(signed.note, encoding="utf-8")
            os.replace(tmp, path)
        return signed

    @staticmethod
    def _check_extends(old: Checkpoint, new: Checkpoint, leaves: list[bytes] | None, proof: list[bytes] | None) -> None:
        where = f"{new.origin}: the checkpoint of size {new.tree_size}"
        if new.tree_size < old.tree_size:
            raise WitnessError(f"{where} is older than the one this witness cosigned (size {old.tree_size}): "
                               "rolled back")
        if leaves is not None:
            proof = merkle.MerkleTree(leaves[:new.tree_size]).consistency_proof(old.tree_size, new.tree_size)
        if proof is None:
            raise WitnessError(f"{where}: give the log (--ledger or --tiles) or a consistency proof from size "
                               f"{old.tree_size}")
        if not merkle.verify_consistency(old.tree_size, new.tree_size, bytes.fromhex(old.root_hash),
                                         bytes.fromhex(new.root_hash), proof):
            raise WitnessError(f"{where} does not extend the checkpoint of size {old.tree_size} this witness "
                               "cosigned: the log was forked or rewritten")
