// Command ledgercheck verifies a microdrama ledger published as C2SP tlog-tiles with Go's own sumdb
// packages (golang.org/x/mod/sumdb/note and tlog): an implementation independent of the Python one.
//
// It reads a JSON request on stdin, checks the checkpoint's signed note (and a witness cosignature),
// every tile and entry bundle against the tree head, our inclusion and consistency proofs, and exits 1
// naming the first failure.
package main

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

type request struct {
	Vkey        string   `json:"vkey"`
	WitnessVkey string   `json:"witness_vkey"`
	Tiles       string   `json:"tiles"`
	OldNote     string   `json:"old_note"`
	Consistency []string `json:"consistency_proof"`
	Inclusion   []struct {
		Index int64    `json:"index"`
		Entry string   `json:"entry"`
		Proof []string `json:"proof"`
	} `json:"inclusion"`
}

// cosigVerifier checks C2SP tlog-cosignature/v1 Ed25519 cosignatures (type 0x04).
type cosigVerifier struct {
	name string
	hash uint32
	key  ed25519.PublicKey
}

func (v cosigVerifier) Name() string    { return v.name }
func (v cosigVerifier) KeyHash() uint32 { return v.hash }
func (v cosigVerifier) Verify(msg, sig []byte) bool {
	if len(sig) != 72 {
		return false
	}
	ts := binary.BigEndian.Uint64(sig[:8])
	m := append([]byte(fmt.Sprintf("cosignature/v1\ntime %d\n", ts)), msg...)
	return ed25519.Verify(v.key, m, sig[8:])
}

func newCosig(vkey string) cosigVerifier {
	parts := strings.SplitN(vkey, "+", 3)
	if len(parts) != 3 {
		fail("witness vkey malformed")
	}
	h, err := strconv.ParseUint(parts[1], 16, 32)
	raw, err2 := base64.StdEncoding.DecodeString(parts[2])
	if err != nil || err2 != nil || len(raw) != 33 || raw[0] != 4 {
		fail("witness vkey is not an Ed25519 cosignature key")
	}
	sum := sha256.Sum256(append(append([]byte(parts[0]+"\n"), 4), raw[1:]...))
	if binary.BigEndian.Uint32(sum[:4]) != uint32(h) {
		fail("witness vkey key hash mismatch")
	}
	return cosigVerifier{parts[0], uint32(h), ed25519.PublicKey(raw[1:])}
}

type tileDir struct{ dir string }

func (t tileDir) Height() int                      { return 8 }
func (t tileDir) SaveTiles([]tlog.Tile, [][]byte) {}
func (t tileDir) ReadTiles(ts []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(ts))
	for i, tile := range ts {
		b, err := os.ReadFile(filepath.Join(t.dir, c2spPath(tile)))
		if err != nil {
			return nil, err
		}
		out[i] = b
	}
	return out, nil
}

// c2spPath maps Go's tile/H/L/N[.p/W] (L "data" for entries) to C2SP's tile/L/N[.p/W] (L "entries").
func c2spPath(t tlog.Tile) string {
	parts := strings.SplitN(t.Path(), "/", 3)
	rest := parts[2]
	if strings.HasPrefix(rest, "data/") {
		rest = "entries/" + rest[len("data/"):]
	}
	return "tile/" + rest
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "FAIL: "+format+"\n", args...)
	os.Exit(1)
}

func parseTree(text string) (string, tlog.Tree) {
	lines := strings.Split(text, "\n")
	if len(lines) < 4 {
		fail("checkpoint body too short")
	}
	n, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil {
		fail("checkpoint size: %v", err)
	}
	h, err := tlog.ParseHash(lines[2])
	if err != nil {
		fail("checkpoint root: %v", err)
	}
	return lines[0], tlog.Tree{N: n, Hash: h}
}

func hashes(hexes []string) []tlog.Hash {
	out := make([]tlog.Hash, len(hexes))
	for i, s := range hexes {
		b, err := hex.DecodeString(s)
		if err != nil || len(b) != 32 {
			fail("proof hash %d malformed", i)
		}
		copy(out[i][:], b)
	}
	return out
}

func main() {
	var in request
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		fail("request: %v", err)
	}
	logV, err := note.NewVerifier(in.Vkey)
	if err != nil {
		fail("log vkey: %v", err)
	}
	verifiers := []note.Verifier{logV}
	if in.WitnessVkey != "" {
		verifiers = append(verifiers, newCosig(in.WitnessVkey))
	}
	msg, err := os.ReadFile(filepath.Join(in.Tiles, "checkpoint"))
	if err != nil {
		fail("checkpoint: %v", err)
	}
	n, err := note.Open(msg, note.VerifierList(verifiers...))
	if err != nil {
		fail("checkpoint note: %v", err)
	}
	if len(n.Sigs) != len(verifiers) {
		fail("checkpoint: %d verified signatures, want %d", len(n.Sigs), len(verifiers))
	}
	origin, tree := parseTree(n.Text)
	if origin != logV.Name() {
		fail("origin %q is not the log's key name %q", origin, logV.Name())
	}
	hr := tlog.TileHashReader(tree, tileDir{in.Tiles})
	count := int64(0)
	for start := int64(0); start < tree.N; start += 256 {
		w := tree.N - start
		if w > 256 {
			w = 256
		}
		tile := tlog.Tile{H: 8, L: -1, N: start / 256, W: int(w)}
		data, err := os.ReadFile(filepath.Join(in.Tiles, c2spPath(tile)))
		if err != nil {
			fail("entry bundle: %v", err)
		}
		for i := int64(0); i < w; i++ {
			if len(data) < 2 {
				fail("entry bundle %d truncated", tile.N)
			}
			ln := int(binary.BigEndian.Uint16(data[:2]))
			rec := data[2 : 2+ln]
			data = data[2+ln:]
			idx := start + i
			p, err := tlog.ProveRecord(tree.N, idx, hr)
			if err != nil {
				fail("entry %d: prove: %v", idx, err)
			}
			if err := tlog.CheckRecord(p, tree.N, tree.Hash, idx, tlog.RecordHash(rec)); err != nil {
				fail("entry %d: %v", idx, err)
			}
			count++
		}
	}
	for _, inc := range in.Inclusion {
		if err := tlog.CheckRecord(hashes(inc.Proof), tree.N, tree.Hash, inc.Index, tlog.RecordHash([]byte(inc.Entry))); err != nil {
			fail("our inclusion proof of entry %d: %v", inc.Index, err)
		}
	}
	if in.OldNote != "" {
		old, err := note.Open([]byte(in.OldNote), note.VerifierList(logV))
		if err != nil {
			fail("old checkpoint: %v", err)
		}
		_, oldTree := parseTree(old.Text)
		if err := tlog.CheckTree(hashes(in.Consistency), tree.N, tree.Hash, oldTree.N, oldTree.Hash); err != nil {
			fail("our consistency proof: %v", err)
		}
		goProof, err := tlog.ProveTree(tree.N, oldTree.N, hr)
		if err != nil {
			fail("go consistency proof: %v", err)
		}
		if err := tlog.CheckTree(goProof, tree.N, tree.Hash, oldTree.N, oldTree.Hash); err != nil {
			fail("go consistency proof: %v", err)
		}
	}
	fmt.Printf("OK %d entries, tree %d\n", count, tree.N)
}
