package ipam

import (
	"maps"
	"slices"

	"github.com/weavemesh/weave/mesh"
)

// Status strings (Report.Status).
const (
	StatusReady             = "ready"
	StatusIdle              = "idle"
	StatusAwaitingConsensus = "awaiting consensus"
	// StatusAwaitingRing: the peer waits to adopt a ring from the mesh (its database was
	// lost but it belonged to a ring, or ForgetRing was called); requests wait meanwhile.
	StatusAwaitingRing    = "awaiting the ring from peers (this peer belonged to one; it will not make its own)"
	StatusObserverWaiting = "waiting for the ring (observer)"
	StatusClosed          = "closed"
)

// Report is the IPAM part of `weavectl report` (snake_case JSON, see CONTRACT.md).
type Report struct {
	Status        string        `json:"status"`
	Range         string        `json:"range"`
	DefaultSubnet string        `json:"default_subnet"`
	Entries       []ReportEntry `json:"entries"`
	Owners        []OwnerStatus `json:"owners"`
	// Error is the last refused ring update (while they keep coming), with the repair.
	Error string `json:"error,omitempty"`
	// Conflicts lists addresses in use here that another peer owns and uses too.
	Conflicts []string `json:"conflicts,omitempty"`
	Counts    Counts   `json:"counts"`
}

// ReportEntry is one ring token.
type ReportEntry struct {
	Token     string `json:"token"`
	Size      uint32 `json:"size"`
	Peer      string `json:"peer"`
	Nickname  string `json:"nickname"`
	Reachable bool   `json:"reachable"`
	Version   uint32 `json:"version"`
	Free      uint32 `json:"free"`
}

// OwnerStatus sums a peer's space (`weavectl status ipam`).
type OwnerStatus struct {
	Peer      string  `json:"peer"`
	Nickname  string  `json:"nickname"`
	Addresses uint64  `json:"addresses"`
	Percent   float64 `json:"percent"`
	Reachable bool    `json:"reachable"`
	Self      bool    `json:"self"`
}

// Counts feeds the metrics (weave_ips, weave_max_ips, weave_ipam_unreachable_count, ...).
type Counts struct {
	LocalUsed            uint64 `json:"local_used"`
	LocalOwned           uint64 `json:"local_owned"`
	LocalFree            uint64 `json:"local_free"`
	MaxIPs               uint64 `json:"max_ips"`
	UnreachablePeers     int    `json:"unreachable_peers"`
	UnreachableAddresses uint64 `json:"unreachable_addresses"`
	Pending              int    `json:"pending"`
	Conflicts            uint64 `json:"conflicts"`
	RejectedUpdates      uint64 `json:"rejected_updates"`
	BadMessages          uint64 `json:"bad_messages"`
	Reclaimed            uint64 `json:"reclaimed"`
	PersistErrors        uint64 `json:"persist_errors"`
	// BadMemberRecords counts unreadable membership records (Config.MemberPath) at start.
	BadMemberRecords uint64 `json:"bad_member_records"`
	// Restored counts addresses in use on this host (Config.InUse) that the database did
	// not know and that were recorded again at start.
	Restored uint64 `json:"restored"`
}

// Counts returns the figures for metrics.
func (a *Allocator) Counts() Counts {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.countsLocked()
}

func (a *Allocator) countsLocked() Counts {
	c := Counts{
		LocalUsed:        uint64(len(a.byAddr)),
		LocalOwned:       a.space.NumOwned(),
		LocalFree:        a.space.NumFree(),
		MaxIPs:           uint64(a.cfg.rng.Size()),
		Pending:          int(a.pending.Load()),
		Conflicts:        a.stats.conflicts.Load(),
		RejectedUpdates:  a.stats.rejected.Load(),
		BadMessages:      a.stats.badMessages.Load(),
		Reclaimed:        a.stats.reclaimed.Load(),
		PersistErrors:    a.stats.persistErrors.Load(),
		BadMemberRecords: a.stats.badRecords.Load(),
		Restored:         a.stats.restored.Load(),
	}
	unreach := map[mesh.PeerName]bool{}
	for _, pc := range a.ring.Pieces() {
		if !a.reachable(pc.Peer) {
			unreach[pc.Peer] = true
			c.UnreachableAddresses += uint64(pc.Size())
		}
	}
	c.UnreachablePeers = len(unreach)
	return c
}

// Status returns the report.
func (a *Allocator) Status() Report {
	a.mu.Lock()
	defer a.mu.Unlock()
	r := Report{
		Range:         a.cfg.Range.String(),
		DefaultSubnet: a.cfg.DefaultSubnet.String(),

		Counts:  a.countsLocked(),
		Entries: []ReportEntry{},
		Owners:  []OwnerStatus{},
	}
	// A refused ring comes back with every periodic gossip while the cause lasts.
	if a.ringErr != "" && a.cfg.Now().Sub(a.ringErrAt) < 3*a.cfg.tick {
		r.Error = a.ringErr
	}
	switch {
	case a.closed:
		r.Status = StatusClosed
	case a.ring.Empty() && a.cfg.mode == initObserver:
		r.Status = StatusObserverWaiting
	case a.ring.Empty() && a.adopting:
		r.Status = StatusAwaitingRing
	case a.ring.Empty() && a.proposing:
		r.Status = StatusAwaitingConsensus
	case a.ring.Empty():
		r.Status = StatusIdle
	case r.Counts.Pending > 0 && a.waitReason != "":
		r.Status = a.waitReason
	default:
		r.Status = StatusReady
	}
	owned := map[mesh.PeerName]uint64{}
	for _, pc := range a.ring.Pieces() {
		reach := a.reachable(pc.Peer)
		r.Entries = append(r.Entries, ReportEntry{
			Token: pc.Token.String(), Size: pc.Size(), Peer: pc.Peer.String(),
			Nickname: a.nick(pc.Peer), Reachable: reach, Version: pc.Version, Free: min(pc.Free, pc.Size()),
		})
		owned[pc.Peer] += uint64(pc.Size())
	}
	for _, p := range slices.Sorted(maps.Keys(owned)) {
		r.Owners = append(r.Owners, OwnerStatus{
			Peer: p.String(), Nickname: a.nick(p), Addresses: owned[p],
			Percent:   100 * float64(owned[p]) / float64(a.cfg.rng.Size()),
			Reachable: a.reachable(p), Self: p == a.cfg.Name,
		})
	}
	for _, ad := range slices.Sorted(maps.Keys(a.conflicts)) {
		r.Conflicts = append(r.Conflicts, a.conflicts[ad])
	}
	return r
}

func (a *Allocator) nick(p mesh.PeerName) string {
	if p == a.cfg.Name {
		return a.cfg.NickName
	}
	return a.cfg.Peers.NickName(p)
}

// Ready reports whether the ring exists (allocation can proceed without waiting for
// consensus).
func (a *Allocator) Ready() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return !a.ring.Empty()
}
