"""Who checkpoints are checked against: the pinned log key and witness keys (config, never beside the DB), and
C2SP tlog-cosignature/v1 witness cosignatures."""
from __future__ import annotations

import base64
import os
import struct
import tomllib
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pipeline.metering.ledger_sign import (COSIG_ALG, LEGACY_KEY_NAME, Checkpoint, Signature, _key_hash, _raw,
                                           config_dir, load_public_key, parse_vkey)

PUBKEY_ENV = "MICRODRAMA_LEDGER_PUBKEY"  # a pinned vkey (or a file holding one) that overrides the config
TRUST_FILE = "ledger-trust.toml"
COSIG_HEADER = "cosignature/v1\n"


class TrustError(ValueError):
    """The trust configuration is unusable; the message names the field and the fix."""


@dataclass(frozen=True)
class Trust:
    """The pinned keys: `log_keys` (signed-note vkeys, key name = the ledger's origin), `witness_keys`
    (cosignature vkeys, type 0x04) and how many witnesses must have cosigned a checkpoint a holder relies on."""

    log_keys: tuple[str, ...] = ()
    witness_keys: tuple[str, ...] = ()
    witness_quorum: int = 0


def trust_path() -> Path:
    return config_dir() / TRUST_FILE


def load_trust(path: Path | None = None) -> Trust:
    """The trust file (default <config dir>/ledger-trust.toml); missing means nothing pinned."""
    path = path or trust_path()
    if not path.is_file():
        return Trust()
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise TrustError(f"{path}: not TOML ({e}); fix or delete it and pin again") from None
    for name in ("log_keys", "witness_keys"):
        value = doc.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TrustError(f"{path}: {name} must be a list of vkey strings")
    quorum = doc.get("witness_quorum", 0)
    if not isinstance(quorum, int) or isinstance(quorum, bool) or not 0 <= quorum <= len(doc.get("witness_keys", [])):
        raise TrustError(f"{path}: witness_quorum must be a whole number from 0 to the number of witness_keys")
    for v in doc.get("log_keys", []):
        _checked(v, path, "log_keys", None)
    for v in doc.get("witness_keys", []):
        _checked(v, path, "witness_keys", COSIG_ALG)
    return Trust(tuple(doc.get("log_keys", [])), tuple(doc.get("witness_keys", [])), quorum)


def _checked(vkey: str, path: Path, field: str, alg: bytes | None) -> None:
    try:
        parse_vkey(vkey) if alg is None else parse_vkey(vkey, alg)
    except ValueError as e:
        raise TrustError(f"{path}: {field}: {e}") from None


def save_trust(trust: Trust, path: Path | None = None) -> Path:
    """Write the trust file atomically (0600 folder kept private)."""
    path = path or trust_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    quote = lambda v: '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'  # noqa: E731
    text = ("# Keys microdrama trusts to check ledger checkpoints (docs/ledger.md, 'Trust model').\n"
            f"log_keys = [{', '.join(quote(v) for v in trust.log_keys)}]\n"
            f"witness_keys = [{', '.join(quote(v) for v in trust.witness_keys)}]\n"
            f"witness_quorum = {trust.witness_quorum}\n")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def pin_log_key(vkey: str, path: Path | None = None) -> bool:
    """Add a log vkey to the trust file; False when it was already there."""
    parse_vkey(vkey)
    trust = load_trust(path)
    if vkey in trust.log_keys:
        return False
    save_trust(Trust((*trust.log_keys, vkey), trust.witness_keys, trust.witness_quorum), path)
    return True


def pin_witness_key(vkey: str, quorum: int | None = None, path: Path | None = None) -> Trust:
    parse_vkey(vkey, COSIG_ALG)
    trust = load_trust(path)
    keys = trust.witness_keys if vkey in trust.witness_keys else (*trust.witness_keys, vkey)
    q = trust.witness_quorum if quorum is None else quorum
    if not 0 <= q <= len(keys):
        raise TrustError(f"--quorum: must be from 0 to {len(keys)} (the witness keys pinned)")
    new = Trust(trust.log_keys, keys, q)
    save_trust(new, path)
    return new


@dataclass(frozen=True)
class LogVerifier:
    """A pinned log key: `name` None accepts the origin (and the pre-C2SP name) as the key name."""

    public: Ed25519PublicKey
    name: str | None
    source: str  # where it came from, for messages

    def problems(self, cp: Checkpoint) -> list[str]:
        return cp.verify(self.public, self.name)


def log_verifier(origin: str, explicit: object = None, trust: Trust | None = None) -> LogVerifier | None:
    """The key to check `origin`'s checkpoints with: `explicit` (--pubkey: vkey, PEM or a file), else
    $MICRODRAMA_LEDGER_PUBKEY, else the trust file's vkey named after the origin; None when nothing is pinned.
    A key found beside the database is never used."""
    for source, value in (("--pubkey", explicit), (PUBKEY_ENV, os.environ.get(PUBKEY_ENV) or None)):
        if value is not None:
            return _verifier(value, source)
    for v in (trust or load_trust()).log_keys:
        name, public = parse_vkey(v)
        if name == origin:
            return LogVerifier(public, name, str(trust_path()))
    return None


def _verifier(value: object, source: str) -> LogVerifier:
    if isinstance(value, str | Path):
        text = str(value).strip()
        path = Path(text).expanduser()
        if len(text) < 4096 and path.is_file():
            text = path.read_text(encoding="utf-8").strip()
        if not text.startswith("-----BEGIN") and text.count("+") >= 2:
            name, public = parse_vkey(text)
            return LogVerifier(public, None if name == LEGACY_KEY_NAME else name, source)
    return LogVerifier(load_public_key(value), None, source)  # PEM or raw bytes: the key name is the origin


# -- witness cosignatures (C2SP tlog-cosignature, Ed25519 type 0x04) ------------------------------------------------

def cosignature_vkey(name: str, public: Ed25519PublicKey) -> str:
    return f"{name}+{_key_hash(name, public, COSIG_ALG).hex()}+{base64.b64encode(COSIG_ALG + _raw(public)).decode()}"


def cosigned_message(cp: Checkpoint, timestamp: int) -> bytes:
    return f"{COSIG_HEADER}time {timestamp}\n{cp.signed_text}".encode()


def cosign(private: Ed25519PrivateKey, name: str, cp: Checkpoint, timestamp: int) -> Signature:
    """The witness's cosignature line for `cp` at POSIX time `timestamp`."""
    if not 0 <= timestamp < 2**63:
        raise ValueError("cosignature timestamp must be within 0..2**63-1")
    sig = struct.pack(">Q", timestamp) + private.sign(cosigned_message(cp, timestamp))
    return Signature(name, _key_hash(name, private.public_key(), COSIG_ALG).hex(), sig)


def cosignature_time(cp: Checkpoint, vkey: str) -> int | None:
    """The POSIX time of `vkey`'s valid cosignature on `cp`, or None when it has none that verifies."""
    name, public = parse_vkey(vkey, COSIG_ALG)
    want = _key_hash(name, public, COSIG_ALG).hex()
    for s in cp.signatures:
        if s.name == name and s.key_id == want and len(s.signature) == 72:
            (when,) = struct.unpack(">Q", s.signature[:8])
            try:
                public.verify(s.signature[8:], cosigned_message(cp, when))
                return when
            except InvalidSignature:
                continue
    return None


def witness_problems(cp: Checkpoint, trust: Trust) -> list[str]:
    """Problems with `cp`'s witness cosignatures under `trust`: a pinned witness's line that does not verify, or
    fewer valid cosignatures than the quorum."""
    problems, good = [], 0
    for v in trust.witness_keys:
        name, public = parse_vkey(v, COSIG_ALG)
        lines = [s for s in cp.signatures if s.name == name and s.key_id == _key_hash(name, public, COSIG_ALG).hex()]
        if cosignature_time(cp, v) is not None:
            good += 1
        elif lines:
            problems.append(f"witness {name}: its cosignature does not verify (note altered or forged)")
    if good < trust.witness_quorum:
        problems.append(f"cosigned by {good} pinned witness(es), the quorum is {trust.witness_quorum}")
    return problems
