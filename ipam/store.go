package ipam

import (
	"net/netip"
	"slices"
	"sync"
)

// MemStore is a Store in memory. It survives an Allocator's Close, so tests use it to
// simulate restarts.
type MemStore struct {
	mu     sync.Mutex
	ring   []byte
	paxos  []byte
	allocs map[Key][]netip.Prefix
	// FailCommits makes Commit fail, to test that allocations are not handed out unsaved.
	FailCommits error
}

// Load implements Store.
func (m *MemStore) Load() (Snapshot, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return Snapshot{Ring: slices.Clone(m.ring), Paxos: slices.Clone(m.paxos), Allocs: cloneAllocs(m.allocs)}, nil
}

// Commit implements Store.
func (m *MemStore) Commit(c Change) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.FailCommits != nil {
		return m.FailCommits
	}
	if c.Ring != nil {
		m.ring = slices.Clone(c.Ring)
	}
	if c.Paxos != nil {
		m.paxos = slices.Clone(c.Paxos)
	}
	if m.allocs == nil {
		m.allocs = map[Key][]netip.Prefix{}
	}
	for k, v := range c.Allocs {
		if len(v) == 0 {
			delete(m.allocs, k)
		} else {
			m.allocs[k] = slices.Clone(v)
		}
	}
	return nil
}

// Allocs returns a copy of the saved allocations.
func (m *MemStore) Allocs() map[Key][]netip.Prefix {
	m.mu.Lock()
	defer m.mu.Unlock()
	return cloneAllocs(m.allocs)
}

// Close implements Store.
func (m *MemStore) Close() error { return nil }

// cloneAllocs is a deep copy: callers may not share the slices of a map behind a lock.
func cloneAllocs(m map[Key][]netip.Prefix) map[Key][]netip.Prefix {
	out := make(map[Key][]netip.Prefix, len(m))
	for k, v := range m {
		out[k] = slices.Clone(v)
	}
	return out
}
