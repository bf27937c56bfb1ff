package daemon

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/weavemesh/weave/api"
	"github.com/weavemesh/weave/internal/logx"
	"github.com/weavemesh/weave/ipam"
	"github.com/weavemesh/weave/mesh"
)

// meshPeers adapts the mesh router to what the allocator asks about peers. The allocator
// calls it under its own lock, so it answers from the router's route lookup and from a view
// of memberlist's verdicts kept here, never by calling back into the allocator.
type meshPeers struct {
	m *mesh.Router

	mu    sync.Mutex
	nicks map[mesh.PeerName]string
	dead  map[mesh.PeerName]time.Time

	changed chan struct{} // routes changed: nicknames may have too
}

func newMeshPeers(m *mesh.Router) *meshPeers {
	p := &meshPeers{m: m, nicks: make(map[mesh.PeerName]string), dead: make(map[mesh.PeerName]time.Time),
		changed: make(chan struct{}, 1)}
	m.OnRoutesChanged(func() {
		select {
		case p.changed <- struct{}{}:
		default:
		}
	})
	m.OnLivenessChange(func(s mesh.MemberStatus) {
		p.mu.Lock()
		defer p.mu.Unlock()
		if s.State == mesh.MemberDead {
			p.dead[s.Peer] = s.Since
		} else {
			delete(p.dead, s.Peer)
		}
	})
	return p
}

func (p *meshPeers) IsReachable(n mesh.PeerName) bool {
	_, ok := p.m.UnicastNextHop(n)
	return ok
}

// NumPeers counts the reachable peers in the topology, ourselves included (ipam.PeerCounter):
// consensus then needs a majority of the mesh it can already see.
func (p *meshPeers) NumPeers() int {
	n := 0
	self, rt := p.m.Name(), p.m.Routes()
	for _, peer := range p.m.Peers() {
		if _, ok := rt.UnicastNextHop(peer); ok || peer == self {
			n++
		}
	}
	return max(n, 1)
}

func (p *meshPeers) NickName(n mesh.PeerName) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.nicks[n]
}

func (p *meshPeers) DeadSince(n mesh.PeerName) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	t, ok := p.dead[n]
	return t, ok
}

// learnNickNames remembers the nicknames of the topology; they outlive the peers' removal
// from it, so `status ipam` can still name a dead owner.
func (p *meshPeers) learnNickNames(st mesh.Status) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, peer := range st.Peers {
		if peer.NickName != "" {
			p.nicks[peer.Name] = peer.NickName
		}
	}
}

// run keeps the nicknames of peers while they are in the topology, so `rmpeer NICKNAME` and
// `status ipam` can name them after they died. It stops when ctx ends.
func (p *meshPeers) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.changed:
			p.learnNickNames(p.m.Status())
		}
	}
}

// newIPAM creates the allocator and registers its gossip channel; the mesh must not have
// started yet, so no ring gossip is missed.
func (d *Daemon) newIPAM(m *mesh.Router) error {
	if !d.cfg.IPAllocRange.IsValid() {
		return nil // IPAM disabled
	}
	d.peers = newMeshPeers(m)
	alloc, err := ipam.New(ipam.Config{
		Range:         d.cfg.IPAllocRange,
		DefaultSubnet: d.cfg.IPAllocDefaultSubnet,
		Init:          d.cfg.IPAllocInit,
		// The persisted targets count as much as the command line's: a peer relaunched
		// without arguments still knows its mesh, and a quorum of one would let it make a
		// ring of its own next to the one its peers hold.
		InitialPeerCount: max(len(d.cfg.Peers), len(m.Targets())) + 1,
		ReclaimAfter:     d.cfg.IPAllocReclaimAfter,
		DBPath:           filepath.Join(d.cfg.StateDir, ipamDBFile),
		MemberPath:       filepath.Join(d.cfg.StateDir, ipamMemberFile),
		InUse:            d.addressesInUse(),
		Name:             d.name,
		NickName:         d.cfg.NickName,
		UID:              d.uid,
		Peers:            d.peers,
		Logger:           d.log, // ipam adds its component key
	})
	if err != nil {
		return fmt.Errorf("ipam: %w", err)
	}
	g, err := m.NewGossip(ipam.ChannelName, alloc)
	if err != nil {
		alloc.Close()
		return fmt.Errorf("ipam gossip channel: %w", err)
	}
	alloc.SetGossip(g)
	d.ipam = alloc
	return nil
}

// State-dir files of IPAM: the database, and the record that this peer has belonged to a
// ring, which outlives the database (see ipam.Config.MemberPath).
const (
	ipamDBFile     = "ipam.db"
	ipamMemberFile = "ipam-member"
)

// addressesInUse lists the addresses of the endpoints this router attached (persisted in
// the state dir), for the allocator to hold before it hands anything out.
func (d *Daemon) addressesInUse() map[ipam.Key][]netip.Prefix {
	d.endpoints.mu.Lock()
	defer d.endpoints.mu.Unlock()
	out := map[ipam.Key][]netip.Prefix{}
	for _, e := range d.endpoints.listLocked() {
		if len(e.CIDRs) > 0 {
			k := ipam.Key{ID: e.ID, Iface: e.IfName}
			out[k] = append(out[k], e.CIDRs...)
		}
	}
	return out
}

// startIPAMBackground starts the work IPAM needs beside requests: it keeps the peers'
// nicknames, and tells the allocator about the addresses attached containers hold, so that a
// lost database never leads to one of them being handed out again (claims wait for the ring).
func (d *Daemon) startIPAMBackground() {
	if d.ipam == nil {
		return
	}
	d.bg.Add(1)
	go func() {
		defer d.bg.Done()
		d.peers.run(d.bgCtx)
	}()
	d.endpoints.mu.Lock()
	eps := d.endpoints.listLocked()
	d.endpoints.mu.Unlock()
	for _, e := range eps {
		d.claimLater(e.ID, e.IfName, e.CIDRs)
	}
}

// ipamError maps allocator errors to API errors.
func ipamError(err error) error {
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return api.Errorf(api.CodeNotReady, "IPAM: %v (is the ring ready? see `weavectl status ipam`)", err)
	case errors.Is(err, ipam.ErrAddressInUse):
		return api.Errorf(api.CodeConflict, "%v", err)
	case errors.Is(err, ipam.ErrOutOfRange), errors.Is(err, ipam.ErrBadArgument), errors.Is(err, ipam.ErrObserver):
		return api.Errorf(api.CodeBadRequest, "%v", err)
	case errors.Is(err, ipam.ErrUnknownPeer):
		return api.Errorf(api.CodeNotFound, "%v", err)
	case errors.Is(err, ipam.ErrPeerReachable), errors.Is(err, ipam.ErrNoHeir):
		return api.Errorf(api.CodeConflict, "%v", err)
	case errors.Is(err, ipam.ErrNotInitialised):
		return api.Errorf(api.CodeNotReady, "%v", err)
	}
	return api.Errorf(api.CodeInternal, "IPAM: %v", err)
}

// allocTimeout bounds how long an API call waits for an address (consensus, space requests).
const allocTimeout = 30 * time.Second

// addresses returns the CIDRs for (id, iface): the ones given (claimed in IPAM when inside
// the range), else the ones held already, else a fresh allocation.
func (d *Daemon) addresses(ctx context.Context, id, iface string, given, held []netip.Prefix) ([]netip.Prefix, error) {
	if len(given) == 0 && len(held) > 0 {
		return held, nil
	}
	if d.ipam == nil {
		if len(given) == 0 {
			return nil, api.Errorf(api.CodeUnavailable, "no CIDR given and IPAM is disabled on this router; give a CIDR")
		}
		return given, nil
	}
	ctx, cancel := context.WithTimeout(ctx, allocTimeout)
	defer cancel()
	if len(given) == 0 {
		if ps := d.ipam.Lookup(id, iface); len(ps) > 0 {
			return ps, nil
		}
		p, err := d.ipam.Allocate(ctx, id, iface, netip.Prefix{})
		if err != nil {
			return nil, ipamError(err)
		}
		return []netip.Prefix{p}, nil
	}
	if !d.ipam.Ready() {
		// The user chose the addresses: the attach does not wait for a ring that may need
		// peers not launched yet (Weave's noErrorOnUnknown). The claim is made once the ring
		// is there, and a conflict is then reported and counted.
		d.claimLater(id, iface, given)
		return given, nil
	}
	for _, c := range given {
		if err := d.ipam.Claim(ctx, id, iface, c); err != nil {
			return nil, ipamError(err)
		}
	}
	return given, nil
}

// claimLater claims addresses in the background once the ring is ready.
func (d *Daemon) claimLater(id, iface string, cidrs []netip.Prefix) {
	d.bg.Add(1)
	go func() {
		defer d.bg.Done()
		for _, c := range cidrs {
			if err := d.ipam.Claim(d.bgCtx, id, iface, c); err != nil && d.bgCtx.Err() == nil {
				d.log.Error("address given to attach conflicts with the IPAM ring", logx.KeyContainer, id, logx.KeyCIDR, c.String(), logx.KeyErr, err)
			}
		}
	}()
}

// release gives addresses back to IPAM (all of (id, iface)'s when cidrs is empty).
func (d *Daemon) release(id, iface string, cidrs []netip.Prefix) {
	if d.ipam == nil {
		return
	}
	var err error
	if len(cidrs) == 0 {
		_, err = d.ipam.Release(id, iface)
	} else {
		for _, c := range cidrs {
			if _, e := d.ipam.ReleaseAddr(id, iface, c.Addr()); e != nil {
				err = e
			}
		}
	}
	if err != nil {
		d.log.Warn("release addresses", logx.KeyContainer, id, logx.KeyErr, err)
	}
}

func (d *Daemon) rmpeer(req api.RmpeerRequest) (api.RmpeerResponse, error) {
	if d.ipam == nil {
		return api.RmpeerResponse{}, api.Errorf(api.CodeUnavailable, "IPAM is disabled on this router")
	}
	d.peers.learnNickNames(d.mesh.Status())
	p, err := d.ipam.ResolvePeer(req.Peer)
	if err != nil {
		return api.RmpeerResponse{}, ipamError(err)
	}
	if p == d.name {
		return api.RmpeerResponse{}, api.Errorf(api.CodeBadRequest, "%s is this router; use `weavectl reset` to leave the network", req.Peer)
	}
	n, err := d.ipam.RemovePeer(p)
	if err != nil {
		return api.RmpeerResponse{}, ipamError(err)
	}
	d.log.Info("took over the address space of a removed peer", logx.KeyPeer, p.String(), logx.KeyCount, n)
	return api.RmpeerResponse{Peer: p.String(), Taken: uint64(n)}, nil
}

// ipamReport converts the allocator's report for the API.
func (d *Daemon) ipamReport(st mesh.Status) *api.IPAM {
	if d.ipam == nil {
		return nil
	}
	d.peers.learnNickNames(st)
	r := d.ipam.Status()
	out := &api.IPAM{
		Status: r.Status, Range: r.Range, DefaultSubnet: r.DefaultSubnet,
		RangeNumIPs: r.Counts.MaxIPs, ActiveIPs: int(r.Counts.LocalUsed), PendingAllocs: r.Counts.Pending,
		Entries: []api.IPAMEntry{}, Owners: []api.IPAMOwner{}, Error: r.Error, Conflicts: r.Conflicts,
	}
	for _, e := range r.Entries {
		out.Entries = append(out.Entries, api.IPAMEntry{Token: e.Token, Size: uint64(e.Size), Free: uint64(e.Free),
			Peer: e.Peer, NickName: e.Nickname, Reachable: e.Reachable, Version: e.Version})
		if !e.Reachable {
			out.UnreachablePeer = appendUnique(out.UnreachablePeer, e.Peer)
		}
	}
	for _, o := range r.Owners {
		out.Owners = append(out.Owners, api.IPAMOwner{Peer: o.Peer, NickName: o.Nickname, Addresses: o.Addresses,
			Percent: o.Percent, Reachable: o.Reachable, Self: o.Self})
	}
	for k, ps := range d.ipam.Owned() {
		out.Owned = append(out.Owned, api.Allocation{ID: k.ID, Iface: k.Iface, CIDRs: prefixesToStrings(ps)})
	}
	slices.SortFunc(out.Owned, func(a, b api.Allocation) int {
		return cmp.Or(cmp.Compare(a.ID, b.ID), cmp.Compare(a.Iface, b.Iface))
	})
	return out
}

func appendUnique(ss []string, s string) []string {
	if slices.Contains(ss, s) {
		return ss
	}
	return append(ss, s)
}

func (d *Daemon) needIPAM() error {
	if d.ipam == nil {
		return api.Errorf(api.CodeUnavailable, "IPAM is disabled on this router")
	}
	return nil
}

func optionalPrefix(s, what string) (netip.Prefix, error) {
	if s == "" {
		return netip.Prefix{}, nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, api.Errorf(api.CodeBadRequest, "bad %s %q: %v", what, s, err)
	}
	return p, nil
}

// ipamAllocate answers POST /v1/ipam/allocate: the addresses (id, iface) holds, or a new one.
func (d *Daemon) ipamAllocate(ctx context.Context, req api.IPAMRequest) (api.IPAMResponse, error) {
	if err := d.needIPAM(); err != nil {
		return api.IPAMResponse{}, err
	}
	subnet, err := optionalPrefix(req.Subnet, "subnet")
	if err != nil {
		return api.IPAMResponse{}, err
	}
	if ps := d.ipam.Lookup(req.ID, req.Iface); len(ps) > 0 {
		return api.IPAMResponse{CIDRs: prefixesToStrings(ps)}, nil
	}
	ctx, cancel := context.WithTimeout(ctx, allocTimeout)
	defer cancel()
	p, err := d.ipam.Allocate(ctx, req.ID, req.Iface, subnet)
	if err != nil {
		return api.IPAMResponse{}, ipamError(err)
	}
	return api.IPAMResponse{CIDRs: []string{p.String()}}, nil
}

// ipamClaim answers POST /v1/ipam/claim: (id, iface) keeps exactly this address.
func (d *Daemon) ipamClaim(ctx context.Context, req api.IPAMRequest) (api.IPAMResponse, error) {
	if err := d.needIPAM(); err != nil {
		return api.IPAMResponse{}, err
	}
	p, err := optionalPrefix(req.CIDR, "cidr")
	if err != nil || !p.IsValid() {
		return api.IPAMResponse{}, api.Errorf(api.CodeBadRequest, "claim needs a cidr")
	}
	ctx, cancel := context.WithTimeout(ctx, allocTimeout)
	defer cancel()
	if err := d.ipam.Claim(ctx, req.ID, req.Iface, p); err != nil {
		return api.IPAMResponse{}, ipamError(err)
	}
	return api.IPAMResponse{CIDRs: prefixesToStrings(d.ipam.Lookup(req.ID, req.Iface))}, nil
}

// ipamRelease answers POST /v1/ipam/release: one address, an interface's, or (no iface) all
// of a container's. Releasing what is not allocated is not an error (CNI DEL is idempotent).
func (d *Daemon) ipamRelease(_ context.Context, req api.IPAMRequest) (api.IPAMReleaseResponse, error) {
	if err := d.needIPAM(); err != nil {
		return api.IPAMReleaseResponse{}, err
	}
	p, err := optionalPrefix(req.CIDR, "cidr")
	if err != nil {
		return api.IPAMReleaseResponse{}, err
	}
	var n int
	switch {
	case p.IsValid():
		n, err = d.ipam.ReleaseAddr(req.ID, req.Iface, p.Addr())
	case req.Iface == "":
		n, err = d.ipam.ReleaseAll(req.ID)
	default:
		n, err = d.ipam.Release(req.ID, req.Iface)
	}
	if err != nil {
		return api.IPAMReleaseResponse{}, ipamError(err)
	}
	return api.IPAMReleaseResponse{Released: n}, nil
}

// ipamList answers GET /v1/ipam/allocations: every allocation this peer holds.
func (d *Daemon) ipamList() ([]api.Allocation, error) {
	if err := d.needIPAM(); err != nil {
		return nil, err
	}
	out := []api.Allocation{}
	for k, ps := range d.ipam.Owned() {
		out = append(out, api.Allocation{ID: k.ID, Iface: k.Iface, CIDRs: prefixesToStrings(ps)})
	}
	slices.SortFunc(out, func(a, b api.Allocation) int {
		return cmp.Or(cmp.Compare(a.ID, b.ID), cmp.Compare(a.Iface, b.Iface))
	})
	return out, nil
}
