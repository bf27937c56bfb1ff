package mesh

import (
	"cmp"
	"slices"
	"time"
)

// Status is a snapshot for `weavectl status` and the report. JSON keys follow CONTRACT.md.
type Status struct {
	Name        PeerName           `json:"name"`
	NickName    string             `json:"nickname"`
	UID         uint64             `json:"uid"`
	Port        int                `json:"port"`
	Encryption  bool               `json:"encryption"`
	Ready       bool               `json:"ready"`
	Peers       []PeerStatus       `json:"peers"`
	Connections []ConnectionStatus `json:"connections"`
	Targets     []string           `json:"targets"`
	Routes      []RouteStatus      `json:"routes"`
	Stats       RouterStats        `json:"stats"`
	Liveness    []MemberStatus     `json:"liveness,omitempty"`
}

// PeerStatus is one peer of the topology with the connections it reports.
type PeerStatus struct {
	Name        PeerName         `json:"name"`
	NickName    string           `json:"nickname"`
	UID         uint64           `json:"uid"`
	Version     uint64           `json:"version"`
	Connections []PeerConnStatus `json:"connections"`
}

// PeerConnStatus is a connection as its owning peer reports it.
type PeerConnStatus struct {
	Name        PeerName `json:"name"`
	Address     string   `json:"address"`
	Outbound    bool     `json:"outbound"`
	Established bool     `json:"established"`
}

// Connection states shown to users (Weave's).
const (
	StateEstablished = "established" // TCP up and (with an overlay) its heartbeats pass
	StatePending     = "pending"     // TCP up, overlay not confirmed yet
	StateConnecting  = "connecting"  // first attempt (or handshake) in progress
	StateRetrying    = "retrying"    // attempt in progress after an error
	StateFailed      = "failed"      // last attempt failed; Info has the reason, NextRetry the time
)

// ConnectionStatus is one of our connections or connection attempts.
type ConnectionStatus struct {
	Peer      PeerName  `json:"peer,omitempty"`
	NickName  string    `json:"nickname,omitempty"`
	Address   string    `json:"address"`
	Outbound  bool      `json:"outbound"`
	State     string    `json:"state"`
	Info      string    `json:"info"`
	Encrypted bool      `json:"encrypted"`
	ConnID    uint64    `json:"conn_id,omitempty"`
	NextRetry time.Time `json:"next_retry,omitzero"`
}

// RouteStatus is one unicast route: data for Dest goes to neighbour Via.
type RouteStatus struct {
	Dest PeerName `json:"dest"`
	Via  PeerName `json:"via"`
}

// Status returns a consistent snapshot.
func (r *Router) Status() Status {
	r.mu.Lock()
	s := Status{
		Name: r.cfg.Name, NickName: r.cfg.NickName, UID: r.cfg.UID, Port: r.cfg.Port,
		Encryption: len(r.cfg.Password) > 0, Ready: r.ready.Load(), Stats: r.stats,
		Targets: r.directTargetsLocked(),
	}
	s.Stats.SelfClaims = r.topo.stats.SelfClaims
	for _, e := range r.topo.peers {
		if e.Version == 0 && e.Name != r.cfg.Name {
			continue
		}
		ps := PeerStatus{Name: e.Name, NickName: e.NickName, UID: e.UID, Version: e.Version, Connections: []PeerConnStatus{}}
		for _, c := range e.Conns {
			ps.Connections = append(ps.Connections, PeerConnStatus{Name: c.Name, Address: c.Addr, Outbound: c.Outbound, Established: c.Established})
		}
		s.Peers = append(s.Peers, ps)
	}
	slices.SortFunc(s.Peers, func(a, b PeerStatus) int { return cmp.Compare(a.Name, b.Name) })
	shown := map[string]bool{}
	for _, c := range r.conns {
		st, info := StateEstablished, "TCP connection established"
		if !c.established {
			st, info = StatePending, "waiting for the overlay to confirm the connection"
		}
		if c.intro.Encrypted {
			info += ", encrypted"
		}
		s.Connections = append(s.Connections, ConnectionStatus{
			Peer: c.intro.Name, NickName: c.intro.NickName, Address: c.remote, Outbound: c.outbound,
			State: st, Info: info, Encrypted: c.intro.Encrypted, ConnID: c.intro.ConnID,
		})
		if c.target != "" {
			shown[c.target] = true
		}
	}
	for _, t := range r.targets {
		if shown[t.addr] || t.state == targetConnected {
			continue
		}
		cs := ConnectionStatus{Address: t.addr, Outbound: true, Peer: t.peer}
		switch t.state {
		case targetAttempting:
			cs.State, cs.Info = StateConnecting, "connecting"
			if t.lastErr != nil {
				cs.State, cs.Info = StateRetrying, "retrying after: "+t.lastErr.Error()
			}
		case targetFailed:
			cs.State, cs.Info, cs.NextRetry = StateFailed, t.lastErr.Error(), t.tryAfter
		case targetSuspended:
			cs.State, cs.Info = StateFailed, "not retried: "+t.lastErr.Error()
		default:
			cs.State, cs.Info = StateConnecting, "waiting to connect"
			if !t.tryAfter.IsZero() {
				cs.NextRetry = t.tryAfter
			}
		}
		s.Connections = append(s.Connections, cs)
	}
	slices.SortFunc(s.Connections, func(a, b ConnectionStatus) int {
		if c := cmp.Compare(a.Peer, b.Peer); c != 0 {
			return c
		}
		if a.Address < b.Address {
			return -1
		}
		return 1
	})
	for dst, via := range r.topo.routes().unicast {
		s.Routes = append(s.Routes, RouteStatus{Dest: dst, Via: via})
	}
	slices.SortFunc(s.Routes, func(a, b RouteStatus) int { return cmp.Compare(a.Dest, b.Dest) })
	r.mu.Unlock()
	s.Liveness = r.livenessStatus()
	return s
}

// Refusals returns how many connections were refused before, during or right after the
// handshake, and how many died of a fatal message error, by reason label (snake_case), for
// the weave_mesh_refused_total{reason} metric.
func (r *Router) Refusals() map[string]uint64 { return r.counters.reasons() }
