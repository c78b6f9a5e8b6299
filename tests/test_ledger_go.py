"""An independent verifier: Go's golang.org/x/mod/sumdb/note and tlog (Debian's golang-golang-x-mod-dev, built
offline in GOPATH mode) check our checkpoints, witness cosignatures, tlog-tiles, inclusion and consistency proofs."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.metering.ledger import Ledger
from pipeline.metering.ledger_cli import app
from pipeline.metering.ledger_sign import vkey

SRC = Path(__file__).parent / "go" / "ledgercheck"
GOPATH = "/usr/share/gocode"  # where Debian's golang-*-dev packages put Go sources
MISSING = ("Go or golang.org/x/mod not found: `make system-deps` installs the Debian packages golang-go and "
           "golang-golang-x-mod-dev")


@pytest.fixture(scope="module")
def ledgercheck(tmp_path_factory) -> Path:
    go = shutil.which("go")
    assert go and (Path(GOPATH) / "src/golang.org/x/mod/sumdb/tlog").is_dir(), MISSING
    out = tmp_path_factory.mktemp("go") / "ledgercheck"
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": GOPATH, "GOCACHE": str(out.parent / "cache"),
           "GOFLAGS": ""}
    subprocess.run([go, "build", "-o", str(out), "."], cwd=SRC, env=env, check=True, timeout=300)
    return out


def check(binary: Path, request: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary)], input=json.dumps(request), capture_output=True, text=True, timeout=120)


def test_go_sumdb_verifies_our_checkpoints_tiles_and_proofs(ledgercheck, tmp_path, monkeypatch):
    monkeypatch.setenv("MICRODRAMA_CONFIG_DIR", str(tmp_path / "config"))
    url = f"sqlite:///{tmp_path}/ledger.db"
    with Ledger.open(url) as led:
        for i in range(300):
            led.append("usage", {"i": i, "note": "é" * (i % 7)}, f"u{i}")
        old = led.checkpoint()
        for i in range(300, 777):
            led.append("cost", {"i": i, "amount": f"{i}.01"}, f"c{i}")
        new = led.checkpoint()
        log_key = vkey(led.public_key(), led.origin)
        consistency = led.consistency_proof(old.tree_size, new.tree_size)
        inclusion = [{"index": i, "entry": led.get(i).canonical.decode(), "proof": led.inclusion_proof(i, new.tree_size)}
                     for i in (0, 255, 256, 511, 776)]
    www = tmp_path / "www"
    cli = CliRunner()
    assert cli.invoke(app, ["publish", str(www), "--ledger", url]).exit_code == 0
    state = ["--state", str(tmp_path / "witness"), "--name", "district.example/witness"]
    res = cli.invoke(app, ["witness", *state, "--tiles", str(www), "--out", str(www / "checkpoint")])
    assert res.exit_code == 0, res.output
    witness_key = cli.invoke(app, ["witness", *state, "--show-key"]).output.strip()
    request = {"vkey": log_key, "witness_vkey": witness_key, "tiles": str(www), "old_note": old.note,
               "consistency_proof": consistency, "inclusion": inclusion}
    ok = check(ledgercheck, request)
    assert ok.returncode == 0 and ok.stdout.strip() == "OK 777 entries, tree 777", ok.stderr

    # and Go refuses what it should: a wrong proof, an altered entry, a forged cosignature
    bad = check(ledgercheck, {**request, "consistency_proof": consistency[::-1]})
    assert bad.returncode == 1 and "our consistency proof" in bad.stderr
    bad = check(ledgercheck, {**request, "inclusion": [{**inclusion[2], "index": 257}]})
    assert bad.returncode == 1 and "our inclusion proof of entry 257" in bad.stderr
    cosigned = (www / "checkpoint").read_text()
    line = cosigned.rstrip("\n").split("\n")[-1]
    name, sig = line[2:].rsplit(" ", 1)
    flipped = sig[:20] + ("A" if sig[20] != "A" else "B") + sig[21:]
    (www / "checkpoint").write_text(cosigned.replace(sig, flipped))
    bad = check(ledgercheck, request)
    assert bad.returncode == 1 and "checkpoint note" in bad.stderr
    (www / "checkpoint").write_text(cosigned)
    bundle = www / "tile" / "entries" / "001"
    data = bytearray(bundle.read_bytes())
    data[40] ^= 1
    bundle.write_bytes(bytes(data))
    bad = check(ledgercheck, request)
    assert bad.returncode == 1 and "entry 256" in bad.stderr
