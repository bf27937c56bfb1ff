package mesh

import (
	"cmp"
	"context"
	"fmt"
	"log"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// memberlist on the mesh: hashicorp/memberlist's SWIM failure detector, its lifecycle and
// the liveness view it agrees on. Its transport (memberlist_transport.go) and streams
// (memberlist_stream.go) ride the mesh connections, so it opens no socket, and a NATed or
// firewalled peer is probed like any other.

// MemberlistTiming tunes memberlist's failure detector. Zero fields take the defaults.
type MemberlistTiming struct {
	ProbeInterval  time.Duration
	ProbeTimeout   time.Duration
	GossipInterval time.Duration
	PushPull       time.Duration
	SuspicionMult  int
	// JoinInterval is how often reachable mesh peers missing from memberlist are joined
	// (this is what re-merges a healed partition).
	JoinInterval time.Duration
}

// WAN-ish defaults: probes travel over TCP and possibly several relays, so timeouts are
// longer than memberlist's LAN preset; suspicion lasts several probe rounds so a slow link
// is not declared dead.
func defaultMemberlistTiming() MemberlistTiming {
	return MemberlistTiming{
		ProbeInterval:  3 * time.Second,
		ProbeTimeout:   2 * time.Second,
		GossipInterval: 500 * time.Millisecond,
		PushPull:       30 * time.Second,
		SuspicionMult:  6,
		JoinInterval:   5 * time.Second,
	}
}

// Liveness states of MemberStatus.State (memberlist's agreed view of a peer).
const (
	MemberAlive   = "alive"
	MemberSuspect = "suspect"
	MemberDead    = "dead"
	MemberLeft    = "left"
)

// MemberStatus is one peer's liveness and since when it has been in that state.
type MemberStatus struct {
	Peer  PeerName  `json:"peer"`
	State string    `json:"state"` // MemberAlive, MemberSuspect, MemberDead or MemberLeft
	Since time.Time `json:"since"`
}

type memberlistState struct {
	r      *Router
	timing MemberlistTiming
	tr     *meshTransport
	ml     *memberlist.Memberlist
	kick   chan struct{}

	mu       sync.Mutex
	members  map[PeerName]*MemberStatus
	onChange []func(MemberStatus)
}

func (r *Router) setupMemberlist() error {
	timing := defaultMemberlistTiming()
	if o := r.cfg.MemberlistTiming; o != nil {
		set := func(d *time.Duration, v time.Duration) {
			if v > 0 {
				*d = v
			}
		}
		set(&timing.ProbeInterval, o.ProbeInterval)
		set(&timing.ProbeTimeout, o.ProbeTimeout)
		set(&timing.GossipInterval, o.GossipInterval)
		set(&timing.PushPull, o.PushPull)
		set(&timing.JoinInterval, o.JoinInterval)
		if o.SuspicionMult > 0 {
			timing.SuspicionMult = o.SuspicionMult
		}
	}
	s := &memberlistState{r: r, timing: timing, kick: make(chan struct{}, 1), members: map[PeerName]*MemberStatus{}}
	s.tr = newMeshTransport(r)
	g, err := r.newGossip(memberlistChannel, s.tr)
	if err != nil {
		return err
	}
	s.tr.gossip = g
	r.ml = s
	return nil
}

func (r *Router) startMemberlist() error {
	s := r.ml
	conf := memberlist.DefaultWANConfig()
	conf.Name = r.cfg.Name.String()
	conf.Transport = s.tr
	conf.AdvertiseAddr = memberlistIP(r.cfg.Name).String()
	conf.AdvertisePort = memberlistPort
	conf.BindPort = memberlistPort
	conf.ProbeInterval = s.timing.ProbeInterval
	conf.ProbeTimeout = s.timing.ProbeTimeout
	conf.GossipInterval = s.timing.GossipInterval
	conf.PushPullInterval = s.timing.PushPull
	conf.SuspicionMult = s.timing.SuspicionMult
	conf.TCPTimeout = 10 * time.Second
	conf.Events = s
	conf.Logger = log.New(memberlistLogWriter{r.cfg.Logger.With("component", "memberlist", "local", r.cfg.Name.String())}, "", 0)
	ml, err := memberlist.Create(conf)
	if err != nil {
		return fmt.Errorf("start memberlist: %w", err)
	}
	s.mu.Lock()
	s.ml = ml
	s.mu.Unlock()
	r.wg.Add(1)
	go s.joinLoop()
	return nil
}

func (r *Router) stopMemberlist() {
	if r.ml == nil {
		return
	}
	r.ml.mu.Lock()
	ml := r.ml.ml
	r.ml.mu.Unlock()
	if ml != nil {
		ml.Shutdown()
	}
	r.ml.tr.Shutdown()
}

// joinLoop joins reachable mesh peers that memberlist does not count as members: new
// neighbours, and after a partition heals, the other side.
func (s *memberlistState) joinLoop() {
	defer s.r.wg.Done()
	t := time.NewTicker(s.timing.JoinInterval)
	defer t.Stop()
	for {
		select {
		case <-s.r.ctx.Done():
			return
		case <-t.C:
		case <-s.kick:
		}
		var missing []string
		s.r.mu.Lock()
		reach := s.r.topo.routes().unicastAll
		s.r.mu.Unlock()
		s.mu.Lock()
		for p := range reach {
			if m := s.members[p]; m == nil || m.State == MemberDead || m.State == MemberLeft {
				missing = append(missing, p.String()+"/"+net.JoinHostPort(memberlistIP(p).String(), strconv.Itoa(memberlistPort)))
			}
		}
		ml := s.ml
		s.mu.Unlock()
		slices.Sort(missing)
		if len(missing) > 8 {
			missing = missing[:8] // memberlist's push-pull spreads the rest
		}
		if len(missing) > 0 && ml != nil {
			if _, err := ml.Join(missing); err != nil {
				s.r.log.Debug("memberlist join", "err", err)
			}
		}
		s.refreshSuspects(ml)
	}
}

// refreshSuspects picks up alive<->suspect transitions, which memberlist has no event for.
func (s *memberlistState) refreshSuspects(ml *memberlist.Memberlist) {
	if ml == nil {
		return
	}
	for _, n := range ml.Members() {
		st := MemberAlive
		if n.State == memberlist.StateSuspect {
			st = MemberSuspect
		}
		s.set(n.Name, st)
	}
}

func (s *memberlistState) set(name string, st string) {
	p, err := ParsePeerName(name)
	if err != nil || p == s.r.cfg.Name {
		return
	}
	s.mu.Lock()
	m := s.members[p]
	if m != nil && m.State == st {
		s.mu.Unlock()
		return
	}
	m = &MemberStatus{Peer: p, State: st, Since: time.Now()}
	s.members[p] = m
	cbs := slices.Clone(s.onChange)
	s.mu.Unlock()
	s.r.log.Info("peer liveness changed", "peer", p.String(), "state", st)
	for _, f := range cbs {
		f(*m)
	}
}

// NotifyJoin implements memberlist.EventDelegate.
func (s *memberlistState) NotifyJoin(n *memberlist.Node) { s.set(n.Name, MemberAlive) }

// NotifyLeave implements memberlist.EventDelegate.
func (s *memberlistState) NotifyLeave(n *memberlist.Node) {
	if n.State == memberlist.StateLeft {
		s.set(n.Name, MemberLeft)
		return
	}
	s.set(n.Name, MemberDead)
}

// NotifyUpdate implements memberlist.EventDelegate.
func (s *memberlistState) NotifyUpdate(n *memberlist.Node) {}

// Liveness returns memberlist's view of every peer it has seen (not ourselves), sorted.
// Empty when memberlist is disabled.
func (r *Router) Liveness() []MemberStatus { return r.livenessStatus() }

func (r *Router) livenessStatus() []MemberStatus {
	if r.ml == nil {
		return nil
	}
	r.ml.mu.Lock()
	defer r.ml.mu.Unlock()
	out := make([]MemberStatus, 0, len(r.ml.members))
	for _, m := range r.ml.members {
		out = append(out, *m)
	}
	slices.SortFunc(out, func(a, b MemberStatus) int { return cmp.Compare(a.Peer, b.Peer) })
	return out
}

// OnLivenessChange registers f to be called when a peer's liveness changes. f must not
// block. It does nothing when memberlist is disabled.
func (r *Router) OnLivenessChange(f func(MemberStatus)) {
	if r.ml == nil {
		return
	}
	r.ml.mu.Lock()
	defer r.ml.mu.Unlock()
	r.ml.onChange = append(r.ml.onChange, f)
}

// kickJoin asks the join loop to run now (a new neighbour may be a new member).
func (r *Router) kickJoin() {
	if r.ml == nil {
		return
	}
	select {
	case r.ml.kick <- struct{}{}:
	default:
	}
}

// memberlistLogWriter turns memberlist's "[LEVEL] memberlist: text" lines into slog
// records at the matching level. Its errors are about peers (unreachable, timed out), which
// the failure detector handles, so they are logged as warnings.
type memberlistLogWriter struct{ log *slog.Logger }

func (w memberlistLogWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	level := slog.LevelDebug
	for prefix, l := range map[string]slog.Level{"[ERR]": slog.LevelWarn, "[WARN]": slog.LevelWarn, "[INFO]": slog.LevelInfo} {
		if strings.HasPrefix(line, prefix) {
			level = l
		}
	}
	if i := strings.Index(line, "memberlist: "); i >= 0 {
		line = line[i+len("memberlist: "):]
	}
	w.log.Log(context.Background(), level, line)
	return len(p), nil
}
