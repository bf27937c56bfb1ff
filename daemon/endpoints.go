package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/weavemesh/weave/api"
	"github.com/weavemesh/weave/internal/logx"
	"github.com/weavemesh/weave/internal/netdev"
)

// endpoint is one interface this router attached to the bridge; the records persist in the
// state dir so that stop/launch keeps ps, detach and re-attach working.
type endpoint struct {
	ID        string         `json:"id"`
	NetnsPath string         `json:"netns_path"`
	IfName    string         `json:"ifname"`
	HostIf    string         `json:"host_if"`
	MAC       string         `json:"mac"`
	CIDRs     []netip.Prefix `json:"cidrs"`
	// Pending marks an attach that was recorded but not yet confirmed: the record is written
	// before any device or address changes, so a daemon killed in between finds it on start
	// and undoes what the attach may have done (reconcileEndpoints).
	Pending bool `json:"pending,omitempty"`
	// Adding are addresses a re-attach is adding to an existing interface, unconfirmed in
	// the same way.
	Adding []netip.Prefix `json:"adding,omitempty"`
}

type endpointStore struct {
	path string
	mu   sync.Mutex
	m    map[string]*endpoint // by ID + "/" + IfName

	// busy serialises operations on one endpoint (attach and detach of the same target),
	// without holding mu while they wait for IPAM or netlink.
	busyMu sync.Mutex
	busy   map[string]chan struct{}
}

// lock waits until no other operation works on key, or ctx ends; unlock when done.
func (s *endpointStore) lock(ctx context.Context, key string) (unlock func(), err error) {
	for {
		s.busyMu.Lock()
		ch, held := s.busy[key]
		if !held {
			ch = make(chan struct{})
			s.busy[key] = ch
			s.busyMu.Unlock()
			return func() {
				s.busyMu.Lock()
				delete(s.busy, key)
				s.busyMu.Unlock()
				close(ch)
			}, nil
		}
		s.busyMu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, api.Errorf(api.CodeUnavailable, "another operation on %s is in progress: %v", key, ctx.Err())
		}
	}
}

func loadEndpoints(stateDir string) (*endpointStore, error) {
	s := &endpointStore{path: filepath.Join(stateDir, "endpoints.json"), m: make(map[string]*endpoint),
		busy: make(map[string]chan struct{})}
	b, err := os.ReadFile(s.path)
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read endpoints: %w", err)
	}
	var list []*endpoint
	if err := json.Unmarshal(b, &list); err != nil {
		return nil, fmt.Errorf("endpoints file %s is corrupt (remove it to start afresh): %w", s.path, err)
	}
	for _, e := range list {
		s.m[e.ID+"/"+e.IfName] = e
	}
	return s, nil
}

// saveLocked writes the records atomically; must hold s.mu.
func (s *endpointStore) saveLocked() error {
	list := s.listLocked()
	b, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return fmt.Errorf("encode endpoints: %w", err)
	}
	tmp := s.path + ".tmp"
	if err := writeSynced(tmp, b); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write endpoints: %w", err)
	}
	if err := os.Rename(tmp, s.path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write endpoints: %w", err)
	}
	return nil
}

// writeSynced writes and syncs a file: a record the daemon acts on must be on disk first.
func writeSynced(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// persistError is the API error for a record that cannot be written: nothing was changed.
func (d *Daemon) persistError(op string, err error) error {
	d.epEvents.persistErrors.Add(1)
	d.log.Error("cannot record endpoint in the state dir; change refused", logx.KeyErr, fmt.Errorf("%s: %w", op, err))
	return api.Errorf(api.CodeInternal, "%s: cannot record it in the state dir, nothing was changed: %v", op, err)
}

func (s *endpointStore) listLocked() []*endpoint {
	list := make([]*endpoint, 0, len(s.m))
	for _, e := range s.m {
		list = append(list, e)
	}
	sort.Slice(list, func(i, j int) bool {
		if list[i].ID != list[j].ID {
			return list[i].ID < list[j].ID
		}
		return list[i].IfName < list[j].IfName
	})
	return list
}

var netnsName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$`)

// resolveTarget turns weavectl's TARGET into an endpoint ID and a namespace path.
func resolveTarget(target string) (id, nsPath string, err error) {
	switch {
	case target == "":
		return "", "", api.Errorf(api.CodeBadRequest, "no target given: want a netns name, a netns path or a PID")
	case target[0] == '/':
		if fi, err := os.Stat(target); err != nil || fi.IsDir() {
			return "", "", api.Errorf(api.CodeNotFound, "no network namespace at %s", target)
		}
		return target, target, checkNetns(target, target)
	case isDigits(target):
		pid, err := strconv.Atoi(target)
		if err != nil || pid <= 0 {
			return "", "", api.Errorf(api.CodeBadRequest, "bad PID %q", target)
		}
		p := fmt.Sprintf("/proc/%d/ns/net", pid)
		if _, err := os.Stat(p); err != nil {
			return "", "", api.Errorf(api.CodeNotFound, "no process %d", pid)
		}
		return "pid:" + target, p, checkNetns(target, p)
	case netnsName.MatchString(target):
		p := filepath.Join("/run/netns", target)
		if _, err := os.Stat(p); err != nil {
			return "", "", api.Errorf(api.CodeNotFound, "no network namespace %q (see `ip netns list`)", target)
		}
		return target, p, checkNetns(target, p)
	default:
		return "", "", api.Errorf(api.CodeBadRequest, "bad target %q: want a netns name, a netns path or a PID", target)
	}
}

// checkNetns refuses a target that is not a network namespace (a FIFO would block the
// attach forever once opened, holding its address), before anything is allocated.
func checkNetns(target, path string) error {
	if err := netdev.CheckNetns(path); err != nil {
		if errors.Is(err, netdev.ErrNotNetns) {
			return api.Errorf(api.CodeBadRequest, "target %s: %s is not a network namespace", target, path)
		}
		return api.Errorf(api.CodeNotFound, "target %s: %v", target, err)
	}
	return nil
}

func isDigits(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return s != ""
}

// hostIfName is the bridge-side veth name: stable per endpoint, within IFNAMSIZ.
func hostIfName(id, ifName string) string {
	h := sha256.Sum256([]byte(id + "/" + ifName))
	return "vethwepl" + hex.EncodeToString(h[:])[:7]
}

func parseCIDRs(ss []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range ss {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, api.Errorf(api.CodeBadRequest, "bad CIDR %q: %v", s, err)
		}
		if !p.Addr().Is4() {
			return nil, api.Errorf(api.CodeBadRequest, "CIDR %q: only IPv4 is supported", s)
		}
		if p.Bits() < 32 && (p.Addr() == p.Masked().Addr() || p.Addr() == lastAddr(p)) {
			return nil, api.Errorf(api.CodeBadRequest, "CIDR %q: %s is the network or broadcast address of its subnet", s, p.Addr())
		}
		out = append(out, p)
	}
	return out, nil
}

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// prefixesToStrings is the one conversion of prefixes for the API and the logs. It never
// returns nil, so a JSON array of CIDRs is [] when empty, never null.
func prefixesToStrings(ps []netip.Prefix) []string {
	out := make([]string, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.String())
	}
	return out
}

// attach implements weavectl attach: the same target attached again keeps its addresses.
//
// It is all or nothing: the endpoint is recorded (as pending) before any address or device
// changes, so a state dir that cannot be written refuses the attach with nothing changed;
// a failure after that undoes what this call did; and a daemon killed half-way finds the
// pending record on start and undoes it there (reconcileEndpoints).
func (d *Daemon) attach(ctx context.Context, req api.AttachRequest) (api.Endpoint, error) {
	id, nsPath, err := resolveTarget(req.Target)
	if err != nil {
		d.epEvents.refusedTargets.Add(1)
		return api.Endpoint{}, err
	}
	ifName := req.IfName
	if ifName == "" {
		ifName = "ethwe"
	}
	if len(ifName) > 15 || !netnsName.MatchString(ifName) {
		return api.Endpoint{}, api.Errorf(api.CodeBadRequest, "bad interface name %q", ifName)
	}
	given, err := parseCIDRs(req.CIDRs)
	if err != nil {
		return api.Endpoint{}, err
	}
	s := d.endpoints
	key := id + "/" + ifName
	unlock, err := s.lock(ctx, key)
	if err != nil {
		return api.Endpoint{}, err
	}
	defer unlock()

	s.mu.Lock()
	prev := s.m[key]
	fresh := prev == nil || prev.NetnsPath != nsPath
	var held, adding []netip.Prefix
	if !fresh {
		held = slices.Clone(prev.CIDRs)
		for _, c := range given {
			if !slices.Contains(held, c) {
				adding = append(adding, c)
			}
		}
	}
	hostIf := hostIfName(id, ifName)
	// The intent goes to disk before anything else happens.
	var e *endpoint
	if fresh {
		e = &endpoint{ID: id, NetnsPath: nsPath, IfName: ifName, HostIf: hostIf, Pending: true}
	} else {
		cp := *prev
		e = &cp
		e.Adding = adding
	}
	if fresh || len(adding) > 0 {
		s.m[key] = e
		if err := s.saveLocked(); err != nil {
			s.restoreLocked(key, prev)
			s.mu.Unlock()
			return api.Endpoint{}, d.persistError("attach "+req.Target, err)
		}
	}
	s.mu.Unlock()

	// undo takes back what this call did, after the record was written.
	undo := func(cidrs []netip.Prefix, devices bool) {
		d.epEvents.rolledBack.Add(1)
		if devices {
			if fresh {
				if err := d.links.Delete(hostIf); err != nil {
					d.log.Warn("roll back attach: remove veth", logx.KeyNetns, nsPath, logx.KeyErr, err)
				}
			} else if len(adding) > 0 {
				if err := d.links.Detach(nsPath, ifName, adding); err != nil {
					d.log.Warn("roll back attach: remove addresses", logx.KeyNetns, nsPath, logx.KeyErr, err)
				}
			}
		}
		switch {
		case fresh && prev == nil:
			d.release(id, ifName, nil)
		case fresh:
			d.releaseOnly(id, ifName, slices.DeleteFunc(slices.Clone(cidrs), func(c netip.Prefix) bool { return slices.Contains(prev.CIDRs, c) }))
		default:
			d.releaseOnly(id, ifName, adding)
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if fresh || len(adding) > 0 {
			s.restoreLocked(key, prev)
			if err := s.saveLocked(); err != nil {
				// The pending record stays on disk; the next start undoes it again.
				d.log.Warn("roll back attach: cannot rewrite the endpoint records", logx.KeyErr, err)
			}
		}
	}

	// Address allocation may wait for the ring; no lock is held meanwhile.
	cidrs, err := d.addresses(ctx, id, ifName, given, held)
	if err != nil {
		undo(given, false)
		return api.Endpoint{}, err
	}
	spec := netdev.AttachSpec{
		NetnsPath: nsPath, IfName: ifName, HostIfName: hostIf, Bridge: d.cfg.Bridge,
		MTU: d.mtu, CIDRs: cidrs, Hairpin: true,
	}
	if r := d.cfg.IPAllocRange; r.IsValid() && !coveredBy(r, cidrs) {
		spec.Routes = []netip.Prefix{r}
	}
	got, err := d.links.Attach(spec)
	if err != nil {
		undo(cidrs, true)
		return api.Endpoint{}, api.Errorf(api.CodeInternal, "attach %s: %v", req.Target, err)
	}
	s.mu.Lock()
	done := *e
	done.Pending, done.Adding, done.MAC = false, nil, got.MAC.String()
	for _, c := range cidrs {
		if !slices.Contains(done.CIDRs, c) {
			done.CIDRs = append(done.CIDRs, c)
		}
	}
	changed := fresh || len(adding) > 0 || prev.MAC != done.MAC
	s.m[key] = &done
	if changed {
		if err := s.saveLocked(); err != nil {
			if fresh || len(adding) > 0 {
				s.m[key] = e
				s.mu.Unlock()
				undo(cidrs, true)
				return api.Endpoint{}, d.persistError("attach "+req.Target, err)
			}
			// Only the MAC changed (the interface was re-made): the record still names the
			// endpoint and its addresses, and the start after a restart reads the MAC anew.
			d.log.Warn("cannot record the new MAC of an endpoint", logx.KeyNetns, nsPath, logx.KeyErr, err)
		}
	}
	s.mu.Unlock()
	d.log.Info("attached", logx.KeyNetns, nsPath, logx.KeyContainer, id, logx.KeyCIDR, prefixesToStrings(done.CIDRs))
	return api.Endpoint{ID: id, MAC: done.MAC, CIDRs: prefixesToStrings(cidrs)}, nil
}

// releaseOnly gives back exactly cidrs; unlike release, none means none, not all.
func (d *Daemon) releaseOnly(id, iface string, cidrs []netip.Prefix) {
	if len(cidrs) > 0 {
		d.release(id, iface, cidrs)
	}
}

// restoreLocked puts back the record key had before (none: removes it); must hold s.mu.
func (s *endpointStore) restoreLocked(key string, prev *endpoint) {
	if prev == nil {
		delete(s.m, key)
	} else {
		s.m[key] = prev
	}
}

func coveredBy(r netip.Prefix, cidrs []netip.Prefix) bool {
	for _, c := range cidrs {
		if c.Masked().Contains(r.Addr()) && c.Bits() <= r.Bits() {
			return true
		}
	}
	return false
}

// detach removes the given CIDRs from the endpoint, or the endpoint with all of them. The
// record changes on disk first: a state dir that cannot be written refuses the detach with
// the interface and addresses untouched.
func (d *Daemon) detach(ctx context.Context, req api.DetachRequest) (api.Endpoint, error) {
	ifName := req.IfName
	if ifName == "" {
		ifName = "ethwe"
	}
	cidrs, err := parseCIDRs(req.CIDRs)
	if err != nil {
		return api.Endpoint{}, err
	}
	id, nsPath, rerr := resolveTarget(req.Target)
	s := d.endpoints
	if rerr != nil {
		// The namespace may be gone already: a recorded endpoint can still be forgotten.
		s.mu.Lock()
		var known *endpoint
		for _, e := range s.m {
			if (e.ID == req.Target || e.ID == "pid:"+req.Target) && e.IfName == ifName {
				known = e
			}
		}
		s.mu.Unlock()
		if known == nil {
			return api.Endpoint{}, rerr
		}
		id, nsPath = known.ID, known.NetnsPath
	}
	key := id + "/" + ifName
	unlock, err := s.lock(ctx, key)
	if err != nil {
		return api.Endpoint{}, err
	}
	defer unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.m[key]
	if e == nil {
		return api.Endpoint{}, api.Errorf(api.CodeNotFound, "%s is not attached", req.Target)
	}
	if err := checkHeld(cidrs, e.CIDRs, req.Target); err != nil {
		return api.Endpoint{}, err
	}
	removed := cidrs
	if len(cidrs) == 0 {
		removed = e.CIDRs
		delete(s.m, key)
	} else {
		cp := *e
		cp.CIDRs = slices.DeleteFunc(slices.Clone(e.CIDRs), func(c netip.Prefix) bool { return slices.Contains(cidrs, c) })
		s.m[key] = &cp
	}
	if err := s.saveLocked(); err != nil {
		s.m[key] = e
		return api.Endpoint{}, d.persistError("detach "+req.Target, err)
	}
	if err := d.links.Detach(nsPath, ifName, cidrs); err != nil {
		s.m[key] = e
		if serr := s.saveLocked(); serr != nil {
			d.log.Warn("detach failed and the record cannot be restored", logx.KeyNetns, nsPath, logx.KeyErr, serr)
		}
		return api.Endpoint{}, api.Errorf(api.CodeInternal, "detach %s: %v", req.Target, err)
	}
	d.release(id, ifName, cidrs)
	d.log.Info("detached", logx.KeyNetns, nsPath, logx.KeyContainer, id, logx.KeyCIDR, prefixesToStrings(removed))
	return api.Endpoint{ID: id, MAC: e.MAC, CIDRs: prefixesToStrings(removed)}, nil
}

// expose gives the host addresses on the bridge, recorded as the endpoint weave:expose.
func (d *Daemon) expose(ctx context.Context, req api.ExposeRequest) (api.Endpoint, error) {
	given, err := parseCIDRs(req.CIDRs)
	if err != nil {
		return api.Endpoint{}, err
	}
	// Two concurrent exposes without CIDR (CNI ADDs racing for the gateway) must share one
	// address: the second waits and sees the first's.
	d.exposeMu.Lock()
	defer d.exposeMu.Unlock()
	s := d.endpoints
	key := api.ExposeID + "/" + d.cfg.Bridge
	s.mu.Lock()
	var held []netip.Prefix
	if e := s.m[key]; e != nil {
		held = slices.Clone(e.CIDRs)
	}
	s.mu.Unlock()
	cidrs, err := d.addresses(ctx, api.ExposeID, d.cfg.Bridge, given, held)
	if err != nil {
		return api.Endpoint{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	prev := s.m[key]
	e := &endpoint{ID: api.ExposeID, IfName: d.cfg.Bridge, HostIf: d.cfg.Bridge, MAC: d.name.String()}
	if prev != nil {
		cp := *prev
		e = &cp
	}
	var added []netip.Prefix
	for _, c := range cidrs {
		if !slices.Contains(e.CIDRs, c) {
			e.CIDRs = append(slices.Clone(e.CIDRs), c)
			added = append(added, c)
		}
	}
	// Recorded first, as attach: a state dir that cannot be written changes nothing.
	s.m[key] = e
	if err := s.saveLocked(); err != nil {
		s.restoreLocked(key, prev)
		d.releaseOnly(api.ExposeID, d.cfg.Bridge, added)
		return api.Endpoint{}, d.persistError("expose", err)
	}
	for _, c := range cidrs {
		if err := d.links.Expose(d.cfg.Bridge, c); err != nil {
			for _, a := range added {
				_ = d.links.Hide(d.cfg.Bridge, a)
			}
			d.releaseOnly(api.ExposeID, d.cfg.Bridge, added)
			s.restoreLocked(key, prev)
			if serr := s.saveLocked(); serr != nil {
				d.log.Warn("expose failed and the record cannot be restored", logx.KeyErr, serr)
			}
			return api.Endpoint{}, api.Errorf(api.CodeInternal, "expose %s: %v", c, err)
		}
	}
	return api.Endpoint{ID: api.ExposeID, MAC: e.MAC, CIDRs: prefixesToStrings(cidrs)}, nil
}

func (d *Daemon) hide(_ context.Context, req api.ExposeRequest) (api.Endpoint, error) {
	cidrs, err := parseCIDRs(req.CIDRs)
	if err != nil {
		return api.Endpoint{}, err
	}
	s := d.endpoints
	s.mu.Lock()
	defer s.mu.Unlock()
	key := api.ExposeID + "/" + d.cfg.Bridge
	e := s.m[key]
	if e == nil {
		return api.Endpoint{}, api.Errorf(api.CodeNotFound, "the host is not exposed")
	}
	if err := checkHeld(cidrs, e.CIDRs, "the host"); err != nil {
		return api.Endpoint{}, err
	}
	if len(cidrs) == 0 {
		cidrs = slices.Clone(e.CIDRs)
	}
	cp := *e
	cp.CIDRs = slices.DeleteFunc(slices.Clone(e.CIDRs), func(c netip.Prefix) bool { return slices.Contains(cidrs, c) })
	if len(cp.CIDRs) == 0 {
		delete(s.m, key)
	} else {
		s.m[key] = &cp
	}
	if err := s.saveLocked(); err != nil {
		s.m[key] = e
		return api.Endpoint{}, d.persistError("hide", err)
	}
	for _, c := range cidrs {
		if err := d.links.Hide(d.cfg.Bridge, c); err != nil {
			s.m[key] = e
			if serr := s.saveLocked(); serr != nil {
				d.log.Warn("hide failed and the record cannot be restored", logx.KeyErr, serr)
			}
			return api.Endpoint{}, api.Errorf(api.CodeInternal, "hide %s: %v", c, err)
		}
	}
	d.release(api.ExposeID, d.cfg.Bridge, cidrs)
	return api.Endpoint{ID: api.ExposeID, MAC: e.MAC, CIDRs: prefixesToStrings(cidrs)}, nil
}

// checkHeld refuses to take away an address the endpoint never had: detach and hide would
// otherwise succeed silently, echoing it (and releasing nothing, or another holder's claim).
func checkHeld(cidrs, has []netip.Prefix, whose string) error {
	for _, c := range cidrs {
		if !slices.Contains(has, c) {
			return api.Errorf(api.CodeNotFound, "%s is not an address of %s (it has %s)",
				c, whose, strings.Join(prefixesToStrings(has), ", "))
		}
	}
	return nil
}

// endpointList is what ps and the report show; endpoints whose namespace is gone are left out.
func (d *Daemon) endpointList() []api.Endpoint {
	s := d.endpoints
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []api.Endpoint{}
	for _, e := range s.listLocked() {
		if e.Pending {
			continue // not attached yet (or being undone)
		}
		if e.NetnsPath != "" {
			if _, err := os.Stat(e.NetnsPath); err != nil {
				continue
			}
		}
		out = append(out, api.Endpoint{ID: e.ID, MAC: e.MAC, CIDRs: prefixesToStrings(e.CIDRs)})
	}
	return out
}
