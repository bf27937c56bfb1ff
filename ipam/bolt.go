package ipam

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/weavemesh/weave/mesh"
)

// The database holds one bucket, so that a foreign bbolt file (Weave's own data.db, another
// program's) is recognised instead of being read as ours:
//
//	weavemesh-ipam/
//	  schema = "1"   peer = "aa:bb:..."   range = "10.32.0.0/12"   ring = ring wire form
//	  paxos = our elector's identity and state, while the ring does not exist yet
//	  allocs/ "<container id>\x00<interface>" = "10.32.0.1/12 10.40.0.1/24"
var (
	bucketTop    = []byte("weavemesh-ipam")
	bucketAllocs = []byte("allocs")
	keySchema    = []byte("schema")
	keyPeer      = []byte("peer")
	keyRange     = []byte("range")
	keyRing      = []byte("ring")
	keyPaxos     = []byte("paxos")
	schemaV1     = []byte("1")
)

// BoltStore is the Store in a bbolt file in the state dir.
type BoltStore struct {
	db *bolt.DB
}

// OpenBolt opens (creating if needed) the database at path for peer name and range rng. A
// file that is not a bbolt database, or whose content does not decode, is ErrCorruptDB; a
// bbolt database of another program, peer or range is ErrForeignDB.
func OpenBolt(path string, name mesh.PeerName, rng netip.Prefix) (*BoltStore, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		switch {
		case errors.Is(err, bolterrors.ErrTimeout):
			return nil, fmt.Errorf("open ipam db %s: locked by another process: %w", path, err)
		case errors.Is(err, bolterrors.ErrInvalid), errors.Is(err, bolterrors.ErrVersionMismatch),
			errors.Is(err, bolterrors.ErrChecksum), strings.Contains(err.Error(), "file size too small"):
			return nil, fmt.Errorf("open ipam db %s: %w: %w", path, ErrCorruptDB, err)
		}
		return nil, fmt.Errorf("open ipam db %s: %w", path, err)
	}
	s := &BoltStore{db: db}
	if err := s.init(name, rng); err != nil {
		db.Close()
		return nil, fmt.Errorf("open ipam db %s: %w", path, err)
	}
	return s, nil
}

// guard turns a panic inside bbolt (it panics on some corrupted pages) into ErrCorruptDB.
func guard(err *error) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("%w: %v", ErrCorruptDB, r)
	}
}

func (s *BoltStore) init(name mesh.PeerName, rng netip.Prefix) (err error) {
	defer guard(&err)
	return s.db.Update(func(tx *bolt.Tx) error {
		top := tx.Bucket(bucketTop)
		if top == nil {
			others := 0
			_ = tx.ForEach(func([]byte, *bolt.Bucket) error { others++; return nil })
			if others > 0 {
				return fmt.Errorf("%w: no %s bucket but %d others (not our database)", ErrForeignDB, bucketTop, others)
			}
			top, err := tx.CreateBucket(bucketTop)
			if err != nil {
				return err
			}
			if _, err := top.CreateBucket(bucketAllocs); err != nil {
				return err
			}
			for k, v := range map[string]string{string(keySchema): string(schemaV1), string(keyPeer): name.String(), string(keyRange): rng.String()} {
				if err := top.Put([]byte(k), []byte(v)); err != nil {
					return err
				}
			}
			return nil
		}
		if v := top.Get(keySchema); !bytes.Equal(v, schemaV1) {
			return fmt.Errorf("%w: schema %q, want %q", ErrForeignDB, v, schemaV1)
		}
		if v := string(top.Get(keyPeer)); v != name.String() {
			return fmt.Errorf("%w: it belongs to peer %q, we are %s", ErrForeignDB, v, name)
		}
		if v := string(top.Get(keyRange)); v != rng.String() {
			return fmt.Errorf("%w: it is for range %q, ours is %s", ErrForeignDB, v, rng)
		}
		if top.Bucket(bucketAllocs) == nil {
			return fmt.Errorf("%w: allocations bucket missing", ErrCorruptDB)
		}
		return nil
	})
}

func allocKey(k Key) []byte { return []byte(k.ID + "\x00" + k.Iface) }

func encodePrefixes(ps []netip.Prefix) []byte {
	var b []byte
	for i, p := range ps {
		if i > 0 {
			b = append(b, ' ')
		}
		b = p.AppendTo(b)
	}
	return b
}

func decodePrefixes(b []byte) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Fields(string(b)) {
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	if len(out) == 0 {
		return nil, errors.New("no addresses")
	}
	return out, nil
}

// Load implements Store.
func (s *BoltStore) Load() (snap Snapshot, err error) {
	defer guard(&err)
	snap.Allocs = map[Key][]netip.Prefix{}
	err = s.db.View(func(tx *bolt.Tx) error {
		top := tx.Bucket(bucketTop)
		if r := top.Get(keyRing); r != nil {
			snap.Ring = bytes.Clone(r)
		}
		if r := top.Get(keyPaxos); r != nil {
			snap.Paxos = bytes.Clone(r)
		}
		return top.Bucket(bucketAllocs).ForEach(func(k, v []byte) error {
			id, iface, ok := strings.Cut(string(k), "\x00")
			if !ok {
				return fmt.Errorf("%w: allocation key %q", ErrCorruptDB, k)
			}
			ps, err := decodePrefixes(v)
			if err != nil {
				return fmt.Errorf("%w: allocation %q: %v", ErrCorruptDB, k, err)
			}
			snap.Allocs[Key{id, iface}] = ps
			return nil
		})
	})
	return snap, err
}

// Commit implements Store: one transaction, synced to disk before it returns.
func (s *BoltStore) Commit(c Change) (err error) {
	defer guard(&err)
	return s.db.Update(func(tx *bolt.Tx) error {
		top := tx.Bucket(bucketTop)
		if c.Ring != nil {
			if err := top.Put(keyRing, c.Ring); err != nil {
				return err
			}
		}
		if c.Paxos != nil {
			if err := top.Put(keyPaxos, c.Paxos); err != nil {
				return err
			}
		}
		ab := top.Bucket(bucketAllocs)
		for k, v := range c.Allocs {
			var err error
			if len(v) == 0 {
				err = ab.Delete(allocKey(k))
			} else {
				err = ab.Put(allocKey(k), encodePrefixes(v))
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
}

// Close implements Store.
func (s *BoltStore) Close() error { return s.db.Close() }
