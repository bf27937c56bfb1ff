package ipam

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/weavemesh/weave/internal/logx"
	"github.com/weavemesh/weave/ipam/addr"
	"github.com/weavemesh/weave/ipam/ring"
	"github.com/weavemesh/weave/ipam/space"
)

// openAndLoad opens the store and loads it. A corrupt or foreign database is an error,
// unless DiscardIncompatibleDB says to move it aside and start afresh.
func (a *Allocator) openAndLoad() error {
	switch {
	case a.cfg.Store != nil:
		a.store = a.cfg.Store
		return a.load()
	case a.cfg.DBPath == "":
		a.store = &MemStore{}
		return a.load()
	}
	err := a.openBoltAndLoad()
	if err != nil && a.cfg.DiscardIncompatibleDB && (errors.Is(err, ErrCorruptDB) || errors.Is(err, ErrForeignDB)) {
		aside := fmt.Sprintf("%s.bad-%d", a.cfg.DBPath, a.cfg.Now().Unix())
		a.log.Warn("moving incompatible IPAM database aside and starting afresh", logx.KeyErr, err, logx.KeyPath, aside)
		if rerr := os.Rename(a.cfg.DBPath, aside); rerr != nil {
			return fmt.Errorf("%w (and moving it aside failed: %v)", err, rerr)
		}
		a.ring = ring.New(a.cfg.rng)
		a.space = space.New()
		clear(a.allocs)
		clear(a.byAddr)
		clear(a.dirtyAllocs)
		err = a.openBoltAndLoad()
	}
	return err
}

func (a *Allocator) openBoltAndLoad() error {
	s, err := OpenBolt(a.cfg.DBPath, a.cfg.Name, a.cfg.Range)
	if err != nil {
		return err
	}
	a.store, a.ownStore = s, true
	if err := a.load(); err != nil {
		s.Close()
		return err
	}
	return nil
}

func (a *Allocator) load() error {
	snap, err := a.store.Load()
	if err != nil {
		return fmt.Errorf("load ipam state: %w", err)
	}
	if snap.Ring != nil {
		r, err := ring.Decode(snap.Ring)
		if err != nil {
			return fmt.Errorf("load ipam ring: %w: %w", ErrCorruptDB, err)
		}
		if r.Range != a.cfg.rng {
			return fmt.Errorf("load ipam ring: %w: saved range %v, configured %v", ErrForeignDB, r.Range, a.cfg.rng)
		}
		a.ring = r
		// Only ForgetRing saves an empty ring: keep waiting for a peer's.
		a.adopting = r.Empty()
	}
	if snap.Paxos != nil && !a.adopting && a.node != nil && a.ring.Empty() {
		n, err := decodeElector(snap.Paxos, a.node.Quorum())
		if err != nil {
			return fmt.Errorf("load ipam consensus state: %w: %w", ErrCorruptDB, err)
		}
		if n.ID().Name != a.cfg.Name {
			return fmt.Errorf("load ipam consensus state: %w: elector %v is not us", ErrForeignDB, n.ID().Name)
		}
		a.node = n
		a.proposing = true // we were in an election: carry on
	}
	for _, k := range slices.SortedFunc(maps.Keys(snap.Allocs), compareKeys) {
		for _, p := range snap.Allocs[k] {
			if other, dup := a.byAddr[p.Addr()]; dup {
				a.log.Warn("saved allocation duplicates another; keeping the first", logx.KeyIP, p, logx.KeyContainer, k, logx.KeyReason, "held by "+other.String())
				continue
			}
			a.recordUsed(k, p)
		}
	}
	clear(a.dirtyAllocs)
	a.restoreInUse()
	if err := a.checkMembership(); err != nil {
		return err
	}
	a.startedAt = a.cfg.Now()
	owners := a.ring.Owners()
	a.synced = a.ring.Empty() || (len(owners) == 1 && owners[0] == a.cfg.Name)
	if a.ring.Empty() && a.cfg.mode == initSeed && !a.adopting {
		if err := a.ring.Seed(a.cfg.seeds); err != nil {
			return fmt.Errorf("seed ring: %w", err)
		}
		a.log.Info("ring seeded", logx.KeyPeer, a.cfg.seeds)
	}
	if !a.ring.Empty() {
		a.ringChanged()
	}
	if err := a.commit(); err != nil {
		return fmt.Errorf("save ipam state: %w", err)
	}
	ringState := "ring ready"
	if a.ring.Empty() {
		ringState = "awaiting ring"
	}
	a.log.Info("ipam started", logx.KeyCIDR, a.cfg.Range, logx.KeyState, ringState, logx.KeyCount, len(a.allocs), logx.KeyTotal, a.space.NumOwned())
	return nil
}

// restoreInUse records the addresses the host's containers hold that the database does not
// know (it was lost or emptied), exactly as saved allocations are: used in our space, or
// re-claimed from their owner once the ring is known. Nothing can be allocated before.
func (a *Allocator) restoreInUse() {
	keys := slices.SortedFunc(maps.Keys(a.cfg.InUse), compareKeys)
	restored := 0
	for _, k := range keys {
		if err := k.valid(); err != nil {
			a.log.Warn("ignoring an address in use with a bad key", logx.KeyErr, err)
			continue
		}
		for _, p := range a.cfg.InUse[k] {
			if !p.IsValid() || !p.Addr().Unmap().Is4() {
				a.log.Warn("ignoring an address in use that is not IPv4", logx.KeyContainer, k, logx.KeyIP, p)
				continue
			}
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits())
			if other, dup := a.byAddr[p.Addr()]; dup {
				if other != k {
					a.log.Warn("address in use by a container is allocated to another one here", logx.KeyIP, p, logx.KeyContainer, k, logx.KeyReason, "allocated to "+other.String())
				}
				continue
			}
			a.recordUsed(k, p)
			restored++
		}
	}
	if restored > 0 {
		a.stats.restored.Add(uint64(restored))
		a.log.Warn("the database did not know addresses this host's containers use; recorded them again", logx.KeyCount, restored)
	}
}

// recordUsed records an allocation found at start (saved, or in use by a container) and
// takes its address out of our space when it is in the range.
func (a *Allocator) recordUsed(k Key, p netip.Prefix) {
	a.record(k, p)
	if ad, ok := addr.FromNetip(p.Addr()); ok && a.cfg.rng.Contains(ad) {
		a.space.Take(ad)
	}
}

func compareKeys(x, y Key) int {
	if c := strings.Compare(x.ID, y.ID); c != 0 {
		return c
	}
	return strings.Compare(x.Iface, y.Iface)
}

func (a *Allocator) commit() error {
	if !a.dirtyRing && !a.dirtyPaxos && len(a.dirtyAllocs) == 0 {
		return nil
	}
	c := Change{Allocs: a.dirtyAllocs}
	if a.dirtyRing {
		c.Ring = a.ring.Encode()
	}
	if a.dirtyPaxos && a.node != nil {
		c.Paxos = encodeElector(a.node)
	}
	if err := a.store.Commit(c); err != nil {
		a.stats.persistErrors.Add(1)
		return fmt.Errorf("commit ipam state: %w", err)
	}
	a.dirtyRing, a.dirtyPaxos = false, false
	clear(a.dirtyAllocs)
	return nil
}
