"""Ed25519 signing key for the ledger and its checkpoints as C2SP signed notes (tlog-checkpoint format)."""
from __future__ import annotations

import base64
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

log = logging.getLogger(__name__)

KEY_ENV = "MICRODRAMA_LEDGER_KEY_FILE"
KEY_NAME = "microdrama-ledger"  # signed-note key name; part of the key id
ED25519_ALG = b"\x01"  # signed-note signature type for Ed25519
SIG_PREFIX = "\u2014 "  # em dash + space opens every signature line


def key_hash(name: str, public: Ed25519PublicKey) -> bytes:
    """The 4-byte signed-note key id: SHA-256(name || '\\n' || 0x01 || public key)[:4]."""
    return hashlib.sha256(name.encode() + b"\n" + ED25519_ALG + _raw(public)).digest()[:4]


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def vkey(public: Ed25519PublicKey, name: str = KEY_NAME) -> str:
    """The signed-note verifier key string `name+keyid+base64(0x01||key)` an auditor can pin."""
    return f"{name}+{key_hash(name, public).hex()}+{base64.b64encode(ED25519_ALG + _raw(public)).decode()}"


def key_id(public: Ed25519PublicKey, name: str = KEY_NAME) -> str:
    return key_hash(name, public).hex()


class LedgerKey:
    """Holds the private signing key; it can sign but never shows, prints, pickles or returns the secret."""

    __slots__ = ("_private", "name", "path")

    def __init__(self, private: Ed25519PrivateKey, path: Path | None = None, name: str = KEY_NAME) -> None:
        self._private = private
        self.path = path
        self.name = name

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._private.public_key()

    @property
    def key_id(self) -> str:
        return key_id(self.public_key, self.name)

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)

    def __repr__(self) -> str:
        return f"LedgerKey(name={self.name!r}, key_id={self.key_id}, path={str(self.path)!r}, private=<redacted>)"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("LedgerKey is not picklable: load it from its key file where it is needed")


def default_key_path(ledger_dir: Path | None) -> Path:
    """$MICRODRAMA_LEDGER_KEY_FILE, else <ledger dir>/ledger.key, else ~/.microdrama/ledger.key."""
    if os.environ.get(KEY_ENV):
        return Path(os.environ[KEY_ENV]).expanduser()
    return (ledger_dir or Path.home() / ".microdrama") / "ledger.key"


def public_key_path(key_path: Path) -> Path:
    """ledger.key -> ledger.pub beside it."""
    return key_path.with_suffix(".pub")


def _readable_by_others(path: Path) -> bool:
    """World-readable, or group-readable by a group this process is not in. A Kubernetes secret volume
    with `fsGroup` is group-readable by the pod's own group only, which is fine."""
    st = path.stat()
    if st.st_mode & 0o007:
        return True
    return bool(st.st_mode & 0o070) and st.st_gid not in {os.getgid(), *os.getgroups()}


def load_or_create_key(path: Path) -> LedgerKey:
    """Load the PEM (PKCS#8) Ed25519 key at `path`, creating it 0600 (and its .pub) on first use."""
    if not path.exists():
        _create_key(path)
    if _readable_by_others(path):
        log.warning("ledger key file %s is readable by others (mode %o); chmod 600 it", path,
                    path.stat().st_mode & 0o777)
    private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(private, Ed25519PrivateKey):
        raise ValueError(f"{path} holds a {type(private).__name__}, not an Ed25519 private key")
    key = LedgerKey(private, path)
    _write_public(public_key_path(path), key.public_key)
    return key


def _create_key(path: Path) -> None:
    """Write a fresh key atomically: a 0600 temp file hard-linked into place, so racing creators agree."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
        log.info("created ledger signing key %s", path)
    except FileExistsError:
        pass  # another process won the race; use its key
    finally:
        tmp.unlink()


def _write_public(path: Path, public: Ed25519PublicKey) -> None:
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    if path.exists() and path.read_bytes() == pem:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(pem)
    os.replace(tmp, path)


def load_public_key(source: Ed25519PublicKey | bytes | str | Path) -> Ed25519PublicKey:
    """A public key from a key object, 32 raw bytes, a PEM or vkey string, or a file holding either."""
    if isinstance(source, Ed25519PublicKey):
        return source
    if isinstance(source, bytes) and len(source) == 32:
        return Ed25519PublicKey.from_public_bytes(source)
    text = source.decode() if isinstance(source, bytes) else str(source)
    if isinstance(source, Path) or Path(text).expanduser().is_file():
        from pipeline import safe_io

        text = safe_io.read_text(Path(text).expanduser(), "public key", max_bytes=64 * 1024)
    text = text.strip()
    if text.startswith("-----BEGIN"):
        if "PRIVATE KEY" in text:
            raise ValueError("that is a private key: give the auditor the public key (ledger.pub) instead")
        public = serialization.load_pem_public_key(text.encode())
        if not isinstance(public, Ed25519PublicKey):
            raise ValueError(f"not an Ed25519 public key: {type(public).__name__}")
        return public
    return _parse_vkey(text)


def _parse_vkey(text: str) -> Ed25519PublicKey:
    parts = text.split("+", 2)  # the base64 key may itself contain "+"
    if len(parts) != 3 or "\n" in text:
        raise ValueError(f"{text[:60]!r} is neither a public key file that exists (PEM) nor a signed-note "
                         "vkey (name+keyid+base64); check the --pubkey path")
    name, khash, b64 = parts
    try:
        raw = base64.b64decode(b64, validate=True)
    except ValueError:
        raise ValueError("vkey: its key part is not base64") from None
    if raw[:1] != ED25519_ALG or len(raw) != 33:
        raise ValueError("vkey is not an Ed25519 signed-note key")
    public = Ed25519PublicKey.from_public_bytes(raw[1:])
    if key_hash(name, public).hex() != khash:
        raise ValueError("vkey key id does not match its key")
    return public


@dataclass(frozen=True)
class Signature:
    """One signature line of a signed note."""

    name: str
    key_id: str  # 4-byte key hash, hex
    signature: bytes


@dataclass(frozen=True)
class Checkpoint:
    """A signed tree head: origin, tree size, root hash and time, as a C2SP signed note."""

    origin: str
    tree_size: int
    root_hash: str  # hex
    timestamp: str  # ISO-8601 UTC, an extension line of the checkpoint
    note: str  # the full signed note text, what an auditor keeps
    signatures: tuple[Signature, ...] = field(default=())
    id: int | None = None  # row id in the ledger store

    @property
    def key_id(self) -> str:
        return self.signatures[0].key_id if self.signatures else ""

    @property
    def signed_text(self) -> str:
        """The part of the note the signatures cover (everything before the blank line)."""
        return checkpoint_text(self.origin, self.tree_size, self.root_hash, self.timestamp)

    def to_dict(self) -> dict[str, object]:
        """Plain fields for manifests and MLflow tags; `note` (alias `text`) is the full signed note."""
        return {"id": self.id, "origin": self.origin, "tree_size": self.tree_size, "root_hash": self.root_hash,
                "timestamp": self.timestamp, "key_id": self.key_id, "note": self.note, "text": self.note}

    @classmethod
    def parse(cls, note: str, id: int | None = None) -> Checkpoint:
        """Parse a signed checkpoint note; raises ValueError naming what is malformed."""
        text, sep, sigs = note.partition("\n\n")
        lines = text.split("\n")
        if not sep or len(lines) != 4 or not lines[3].startswith("time "):
            raise ValueError("checkpoint note must be: origin, size, base64 root, 'time ...', blank line, signatures")
        if not lines[1].isdigit():
            raise ValueError(f"checkpoint tree size is not a decimal number: {lines[1]!r}")
        root = base64.b64decode(lines[2], validate=True)
        if len(root) != 32:
            raise ValueError("checkpoint root hash is not 32 bytes")
        return cls(origin=lines[0], tree_size=int(lines[1]), root_hash=root.hex(), timestamp=lines[3][5:],
                   note=note, signatures=_parse_signatures(sigs), id=id)

    def verify(self, public: Ed25519PublicKey, name: str = KEY_NAME) -> list[str]:
        """Problems with this note's signature by `public` (empty when it verifies)."""
        want = key_id(public, name)
        mine = [s for s in self.signatures if s.name == name and s.key_id == want]
        if not mine:
            got = ", ".join(f"{s.name}/{s.key_id}" for s in self.signatures) or "nobody"
            return [f"signed by {got}, not by the trusted key {name}/{want}"]
        try:
            public.verify(mine[0].signature, self.signed_text.encode())
        except InvalidSignature:
            return [f"signature by {name}/{want} does not verify (note altered or forged)"]
        if self.note != self.signed_text + "\n" + _signature_lines(self.signatures):
            return ["note text is not in canonical form (altered)"]
        return []


def _parse_signatures(block: str) -> tuple[Signature, ...]:
    out = []
    for line in block.split("\n"):
        if not line:
            continue
        if not line.startswith(SIG_PREFIX):
            raise ValueError(f"malformed signature line: {line[:40]!r}")
        name, _, b64 = line[len(SIG_PREFIX):].rpartition(" ")
        raw = base64.b64decode(b64, validate=True)
        if len(raw) != 68:
            raise ValueError("Ed25519 signature line must carry a 4-byte key id and 64 signature bytes")
        out.append(Signature(name=name, key_id=raw[:4].hex(), signature=raw[4:]))
    if not out:
        raise ValueError("checkpoint note carries no signature")
    return tuple(out)


def _signature_lines(sigs: tuple[Signature, ...]) -> str:
    return "".join(f"{SIG_PREFIX}{s.name} {base64.b64encode(bytes.fromhex(s.key_id) + s.signature).decode()}\n"
                   for s in sigs)


def checkpoint_text(origin: str, tree_size: int, root_hex: str, timestamp: str) -> str:
    root_b64 = base64.b64encode(bytes.fromhex(root_hex)).decode()
    return f"{origin}\n{tree_size}\n{root_b64}\ntime {timestamp}\n"


def sign_checkpoint(key: LedgerKey, origin: str, tree_size: int, root_hex: str, timestamp: str) -> Checkpoint:
    """Sign (origin, size, root, time) with `key` and return the checkpoint with its note."""
    text = checkpoint_text(origin, tree_size, root_hex, timestamp)
    sig = Signature(name=key.name, key_id=key.key_id, signature=key.sign(text.encode()))
    note = text + "\n" + _signature_lines((sig,))
    return Checkpoint(origin, tree_size, root_hex, timestamp, note, (sig,))
