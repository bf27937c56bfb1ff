package ipam

import (
	"maps"
	"net/netip"
	"slices"
	"sync"
)

// MemStore is a Store in memory. It survives an Allocator's Close, so tests use it to
// simulate restarts.
type MemStore struct {
	mu     sync.Mutex
	ring   []byte
	allocs map[Key][]netip.Prefix
	// FailCommits makes Commit fail, to test that allocations are not handed out unsaved.
	FailCommits error
}

// Load implements Store.
func (m *MemStore) Load() (Snapshot, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := Snapshot{Ring: slices.Clone(m.ring), Allocs: map[Key][]netip.Prefix{}}
	for k, v := range m.allocs {
		s.Allocs[k] = slices.Clone(v)
	}
	return s, nil
}

// Commit implements Store.
func (m *MemStore) Commit(ring []byte, allocs map[Key][]netip.Prefix) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.FailCommits != nil {
		return m.FailCommits
	}
	if ring != nil {
		m.ring = slices.Clone(ring)
	}
	if m.allocs == nil {
		m.allocs = map[Key][]netip.Prefix{}
	}
	for k, v := range allocs {
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
	return maps.Clone(m.allocs)
}

// Close implements Store.
func (m *MemStore) Close() error { return nil }
