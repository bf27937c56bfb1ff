package ipam

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func TestBoltRestartKeepsRingAndAllocations(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "ipam.db")
	n := pumped(t)
	cfg := n.config(1, "consensus", nil)
	cfg.DBPath = db
	a := n.start(t, cfg)
	ctx := ctxT(t, 5*time.Second)
	p1, err := a.Allocate(ctx, "c1", "ethwe", netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Claim(ctx, "c2", "ethwe", pfx("10.32.1.9/22")); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	cfg.UID++
	b := n.start(t, cfg)
	defer b.Close()
	if !b.Ready() {
		t.Fatal("ring not restored")
	}
	if got := b.Lookup("c1", "ethwe"); len(got) != 1 || got[0] != p1 {
		t.Fatalf("allocation lost: %v", got)
	}
	if p, _ := b.Allocate(ctx, "c1", "ethwe", netip.Prefix{}); p != p1 {
		t.Fatalf("same container got a new address %v", p)
	}
	p3, _ := b.Allocate(ctx, "c3", "ethwe", netip.Prefix{})
	if p3 == p1 || p3.Addr() == netip.MustParseAddr("10.32.1.9") {
		t.Fatalf("restored addresses handed out again: %v", p3)
	}
}

func TestBoltRefusesCorruptAndForeignDatabases(t *testing.T) {
	dir := t.TempDir()
	rng := DefaultRange
	garbage := filepath.Join(dir, "garbage.db")
	if err := os.WriteFile(garbage, []byte("this is not a bolt database, not at all, really not................"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenBolt(garbage, 1, rng); !errors.Is(err, ErrCorruptDB) {
		t.Fatalf("garbage file: %v", err)
	}
	big := filepath.Join(dir, "big.db")
	if err := os.WriteFile(big, make([]byte, 64<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenBolt(big, 1, rng); !errors.Is(err, ErrCorruptDB) {
		t.Fatalf("zeroed file: %v", err)
	}
	// Weave's own database: a bolt file with a "top" bucket.
	weave := filepath.Join(dir, "weave.db")
	db, err := bolt.Open(weave, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("top")); return err })
	db.Close()
	if _, err := OpenBolt(weave, 1, rng); !errors.Is(err, ErrForeignDB) {
		t.Fatalf("weave db: %v", err)
	}
	ours := filepath.Join(dir, "ours.db")
	s, err := OpenBolt(ours, 1, rng)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := OpenBolt(ours, 2, rng); !errors.Is(err, ErrForeignDB) {
		t.Fatalf("other peer's db: %v", err)
	}
	if _, err := OpenBolt(ours, 1, netip.MustParsePrefix("10.0.0.0/16")); !errors.Is(err, ErrForeignDB) {
		t.Fatalf("other range's db: %v", err)
	}
	// A bad value inside our own database.
	db, _ = bolt.Open(ours, 0o600, nil)
	_ = db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketTop).Bucket(bucketAllocs).Put([]byte("c1\x00ethwe"), []byte("not-an-address"))
	})
	db.Close()
	if _, err := New(Config{Name: 1, DBPath: ours, TickInterval: -1}); !errors.Is(err, ErrCorruptDB) {
		t.Fatalf("bad allocation value: %v", err)
	}
	db, _ = bolt.Open(ours, 0o600, nil)
	_ = db.Update(func(tx *bolt.Tx) error {
		_ = tx.Bucket(bucketTop).Bucket(bucketAllocs).Delete([]byte("c1\x00ethwe"))
		return tx.Bucket(bucketTop).Put(keyRing, []byte("R\x01garbage"))
	})
	db.Close()
	if _, err := New(Config{Name: 1, DBPath: ours, TickInterval: -1}); !errors.Is(err, ErrCorruptDB) {
		t.Fatalf("bad ring: %v", err)
	}
	a, err := New(Config{Name: 1, DBPath: ours, TickInterval: -1, DiscardIncompatibleDB: true})
	if err != nil {
		t.Fatalf("bad ring with DiscardIncompatibleDB: %v", err)
	}
	a.Close()
	// Opting in, the bad file is moved aside, not silently reused.
	a, err = New(Config{Name: 1, DBPath: garbage, TickInterval: -1, DiscardIncompatibleDB: true})
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	moved, _ := filepath.Glob(garbage + ".bad-*")
	if len(moved) != 1 {
		t.Fatalf("corrupt file not moved aside: %v", moved)
	}
}
