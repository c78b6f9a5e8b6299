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
CONFIG_ENV = "MICRODRAMA_CONFIG_DIR"
KEY_NAME = "microdrama-ledger"  # default signed-note key name of a bare vkey; checkpoints use their origin
LEGACY_KEY_NAME = KEY_NAME  # what checkpoints were signed as before the key name became the origin
ED25519_ALG = b"\x01"  # signed-note signature type for Ed25519
COSIG_ALG = b"\x04"  # C2SP tlog-cosignature/v1, Ed25519
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


def config_dir() -> Path:
    """Where the ledger's signing key and pinned keys live, apart from any ledger's folder:
    $MICRODRAMA_CONFIG_DIR, else $XDG_CONFIG_HOME/microdrama, else ~/.config/microdrama."""
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "microdrama"


def default_key_path(ledger_dir: Path | None = None) -> Path:
    """$MICRODRAMA_LEDGER_KEY_FILE, else <config dir>/ledger.key: never the ledger's own folder, so whoever
    can write the database cannot also re-sign it (`ledger_dir` is only checked against)."""
    if os.environ.get(KEY_ENV):
        return Path(os.environ[KEY_ENV]).expanduser()
    return config_dir() / "ledger.key"


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
    return parse_vkey(text)[1]


def parse_vkey(text: str, alg: bytes = ED25519_ALG) -> tuple[str, Ed25519PublicKey]:
    """(name, key) of a signed-note verifier key `name+keyid+base64(alg||key)`; alg 0x01 for a log key,
    0x04 (COSIG_ALG) for a witness's Ed25519 cosignature key."""
    parts = text.strip().split("+", 2)  # the base64 key may itself contain "+"
    if len(parts) != 3 or "\n" in text.strip():
        raise ValueError(f"{text[:60]!r} is neither a public key file that exists (PEM) nor a signed-note "
                         "vkey (name+keyid+base64); check the --pubkey path")
    name, khash, b64 = parts
    try:
        raw = base64.b64decode(b64, validate=True)
    except ValueError:
        raise ValueError(f"vkey {name!r}: its key part is not base64") from None
    if raw[:1] != alg or len(raw) != 33:
        raise ValueError(f"vkey {name!r} is not an Ed25519 {'cosignature' if alg == COSIG_ALG else 'signed-note'} "
                         "key")
    public = Ed25519PublicKey.from_public_bytes(raw[1:])
    if _key_hash(name, public, alg).hex() != khash:
        raise ValueError(f"vkey {name!r}: key id does not match its key")
    return name, public


def _key_hash(name: str, public: Ed25519PublicKey, alg: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + alg + _raw(public)).digest()[:4]


@dataclass(frozen=True)
class Signature:
    """One signature line of a signed note (known or not: verifiers ignore lines they have no key for)."""

    name: str
    key_id: str  # 4-byte key hash, hex
    signature: bytes  # what follows the key id: 64 bytes for Ed25519, 8 + 64 for an Ed25519 cosignature

    def line(self) -> str:
        return f"{SIG_PREFIX}{self.name} {base64.b64encode(bytes.fromhex(self.key_id) + self.signature).decode()}\n"


@dataclass(frozen=True)
class Checkpoint:
    """A signed tree head (C2SP tlog-checkpoint): origin, tree size, root hash and extension lines (ours: the
    time), as a C2SP signed note; the log's key name is the origin."""

    origin: str
    tree_size: int
    root_hash: str  # hex
    timestamp: str  # ISO-8601 UTC from the `time ...` extension line ("" when the note has none)
    note: str  # the full signed note text, what an auditor keeps
    signatures: tuple[Signature, ...] = field(default=())
    id: int | None = None  # row id in the ledger store

    @property
    def key_id(self) -> str:
        """The key id of the log's own signature (the line named after the origin), else of the first line."""
        mine = [s for s in self.signatures if s.name in (self.origin, LEGACY_KEY_NAME)]
        return (mine or list(self.signatures) or [Signature("", "", b"")])[0].key_id

    @property
    def signed_text(self) -> str:
        """The note body the signatures cover: everything before the blank line, with its final newline."""
        return self.note.partition("\n\n")[0] + "\n"

    def to_dict(self) -> dict[str, object]:
        """Plain fields for manifests and MLflow tags; `note` (alias `text`) is the full signed note."""
        return {"id": self.id, "origin": self.origin, "tree_size": self.tree_size, "root_hash": self.root_hash,
                "timestamp": self.timestamp, "key_id": self.key_id, "note": self.note, "text": self.note}

    @classmethod
    def parse(cls, note: str, id: int | None = None) -> Checkpoint:
        """Parse a signed checkpoint note (C2SP signed-note + tlog-checkpoint); raises ValueError naming what is
        malformed. Signature lines of unknown keys (witness cosignatures, rotated keys) are kept, not refused."""
        if not isinstance(note, str) or not note.endswith("\n") or "\n\n" not in note:
            raise ValueError("checkpoint note must be: origin, size, base64 root, [extension lines], blank line, "
                             "signature lines, each ending in a newline")
        if any(ord(c) < 0x20 and c != "\n" for c in note):
            raise ValueError("checkpoint note holds control characters")
        text, _, sigs = note.partition("\n\n")
        lines = text.split("\n")
        if len(lines) < 3 or not lines[0] or any(not line for line in lines):
            raise ValueError("checkpoint note must start with three non-empty lines: origin, tree size, root hash")
        size = lines[1]
        if not (size.isascii() and size.isdigit()) or (size != "0" and size.startswith("0")):
            raise ValueError(f"checkpoint tree size is not a decimal number without leading zeros: {size!r}")
        try:
            root = base64.b64decode(lines[2], validate=True)
        except ValueError:
            root = b""
        if len(root) != 32:
            raise ValueError("checkpoint root hash is not 32 bytes of standard base64")
        when = next((line[5:] for line in lines[3:] if line.startswith("time ")), "")
        return cls(origin=lines[0], tree_size=int(size), root_hash=root.hex(), timestamp=when, note=note,
                   signatures=_parse_signatures(sigs), id=id)

    def verify(self, public: Ed25519PublicKey, name: str | None = None) -> list[str]:
        """Problems with this note's signature by `public` under key name `name` (default: the origin, as
        tlog-checkpoint asks; the pre-C2SP name `microdrama-ledger` is also accepted). Empty when it verifies."""
        names = [name] if name else [self.origin, LEGACY_KEY_NAME]
        mine = [s for s in self.signatures for n in names if s.name == n and s.key_id == key_id(public, n)]
        want = f"{names[0]}/{key_id(public, names[0])}"
        if not mine:
            got = ", ".join(f"{s.name}/{s.key_id}" for s in self.signatures) or "nobody"
            return [f"signed by {got}, not by the trusted key {want}"]
        try:
            public.verify(mine[0].signature, self.signed_text.encode())
        except InvalidSignature:
            return [f"signature by {want} does not verify (note altered or forged)"]
        return []

    def with_signature(self, sig: Signature) -> Checkpoint:
        """This checkpoint with one more signature line (a witness cosignature), replacing one of the same key."""
        kept = tuple(s for s in self.signatures if (s.name, s.key_id) != (sig.name, sig.key_id))
        sigs = (*kept, sig)
        note = self.signed_text + "\n" + "".join(s.line() for s in sigs)
        return Checkpoint(self.origin, self.tree_size, self.root_hash, self.timestamp, note, sigs, self.id)


def _parse_signatures(block: str) -> tuple[Signature, ...]:
    out = []
    for line in block.split("\n")[:-1]:  # the block ends with a newline
        if not line.startswith(SIG_PREFIX):
            raise ValueError(f"malformed signature line: {line[:40]!r}")
        name, _, b64 = line[len(SIG_PREFIX):].rpartition(" ")
        if not name or " " in name or "+" in name:
            raise ValueError(f"malformed signature line (key name): {line[:40]!r}")
        try:
            raw = base64.b64decode(b64, validate=True)
        except ValueError:
            raw = b""
        if len(raw) < 5:
            raise ValueError(f"malformed signature line (base64 key id and signature): {line[:40]!r}")
        out.append(Signature(name=name, key_id=raw[:4].hex(), signature=raw[4:]))
    if not out:
        raise ValueError("checkpoint note carries no signature")
    return tuple(out)


def checkpoint_text(origin: str, tree_size: int, root_hex: str, timestamp: str) -> str:
    root_b64 = base64.b64encode(bytes.fromhex(root_hex)).decode()
    return f"{origin}\n{tree_size}\n{root_b64}\ntime {timestamp}\n"


def sign_checkpoint(key: LedgerKey, origin: str, tree_size: int, root_hex: str, timestamp: str) -> Checkpoint:
    """Sign (origin, size, root, time) with `key` under the key name `origin` and return the checkpoint."""
    text = checkpoint_text(origin, tree_size, root_hex, timestamp)
    sig = Signature(name=origin, key_id=key_id(key.public_key, origin), signature=key.sign(text.encode()))
    return Checkpoint(origin, tree_size, root_hex, timestamp, text + "\n" + sig.line(), (sig,))
