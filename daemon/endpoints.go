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
}

type endpointStore struct {
	path string
	mu   sync.Mutex
	m    map[string]*endpoint // by ID + "/" + IfName
}

func loadEndpoints(stateDir string) (*endpointStore, error) {
	s := &endpointStore{path: filepath.Join(stateDir, "endpoints.json"), m: make(map[string]*endpoint)}
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
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write endpoints: %w", err)
	}
	if err := os.Rename(tmp, s.path); err != nil {
		return fmt.Errorf("write endpoints: %w", err)
	}
	return nil
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
		return target, target, nil
	case isDigits(target):
		pid, err := strconv.Atoi(target)
		if err != nil || pid <= 0 {
			return "", "", api.Errorf(api.CodeBadRequest, "bad PID %q", target)
		}
		p := fmt.Sprintf("/proc/%d/ns/net", pid)
		if _, err := os.Stat(p); err != nil {
			return "", "", api.Errorf(api.CodeNotFound, "no process %d", pid)
		}
		return "pid:" + target, p, nil
	case netnsName.MatchString(target):
		p := filepath.Join("/run/netns", target)
		if _, err := os.Stat(p); err != nil {
			return "", "", api.Errorf(api.CodeNotFound, "no network namespace %q (see `ip netns list`)", target)
		}
		return target, p, nil
	default:
		return "", "", api.Errorf(api.CodeBadRequest, "bad target %q: want a netns name, a netns path or a PID", target)
	}
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

func prefixesToStrings(ps []netip.Prefix) []string {
	out := make([]string, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.String())
	}
	return out
}

// attach implements weavectl attach: the same target attached again keeps its addresses.
func (d *Daemon) attach(ctx context.Context, req api.AttachRequest) (api.Endpoint, error) {
	id, nsPath, err := resolveTarget(req.Target)
	if err != nil {
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
	s.mu.Lock()
	var held []netip.Prefix
	if prev := s.m[key]; prev != nil && prev.NetnsPath == nsPath {
		held = slices.Clone(prev.CIDRs)
	}
	s.mu.Unlock()
	// Address allocation may wait for the ring; no lock is held meanwhile.
	cidrs, err := d.addresses(ctx, id, ifName, given, held)
	if err != nil {
		return api.Endpoint{}, err
	}
	spec := netdev.AttachSpec{
		NetnsPath: nsPath, IfName: ifName, HostIfName: hostIfName(id, ifName), Bridge: d.cfg.Bridge,
		MTU: d.mtu, CIDRs: cidrs, Hairpin: true,
	}
	if r := d.cfg.IPAllocRange; r.IsValid() && !coveredBy(r, cidrs) {
		spec.Routes = []netip.Prefix{r}
	}
	got, err := d.links.Attach(spec)
	if err != nil {
		if len(given) == 0 && len(held) == 0 {
			d.release(id, ifName, nil) // nothing uses the fresh allocation
		}
		return api.Endpoint{}, api.Errorf(api.CodeInternal, "attach %s: %v", req.Target, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e := &endpoint{ID: id, NetnsPath: nsPath, IfName: ifName, HostIf: spec.HostIfName, MAC: got.MAC.String(), CIDRs: held}
	for _, c := range cidrs {
		if !slices.Contains(e.CIDRs, c) {
			e.CIDRs = append(e.CIDRs, c)
		}
	}
	s.m[key] = e
	if err := s.saveLocked(); err != nil {
		return api.Endpoint{}, api.Errorf(api.CodeInternal, "%v", err)
	}
	d.log.Info("attached", "netns", nsPath, "id", id, "cidrs", prefixesToStrings(e.CIDRs))
	return api.Endpoint{ID: id, MAC: e.MAC, CIDRs: prefixesToStrings(cidrs)}, nil
}

func coveredBy(r netip.Prefix, cidrs []netip.Prefix) bool {
	for _, c := range cidrs {
		if c.Masked().Contains(r.Addr()) && c.Bits() <= r.Bits() {
			return true
		}
	}
	return false
}

// detach removes the given CIDRs from the endpoint, or the endpoint with all of them.
func (d *Daemon) detach(_ context.Context, req api.DetachRequest) (api.Endpoint, error) {
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
	s.mu.Lock()
	defer s.mu.Unlock()
	if rerr != nil {
		// The namespace may be gone already: a recorded endpoint can still be forgotten.
		var known *endpoint
		for _, e := range s.m {
			if (e.ID == req.Target || e.ID == "pid:"+req.Target) && e.IfName == ifName {
				known = e
			}
		}
		if known == nil {
			return api.Endpoint{}, rerr
		}
		id, nsPath = known.ID, known.NetnsPath
	}
	key := id + "/" + ifName
	e := s.m[key]
	if e == nil {
		return api.Endpoint{}, api.Errorf(api.CodeNotFound, "%s is not attached", req.Target)
	}
	// Detaching an address the target never had is an error, not a silent success that
	// echoes it (and releases nothing, or worse, another holder's claim).
	for _, c := range cidrs {
		if !slices.Contains(e.CIDRs, c) {
			return api.Endpoint{}, api.Errorf(api.CodeNotFound, "%s is not an address of %s (it has %s)",
				c, req.Target, strings.Join(prefixesToStrings(e.CIDRs), ", "))
		}
	}
	if err := d.links.Detach(nsPath, ifName, cidrs); err != nil {
		return api.Endpoint{}, api.Errorf(api.CodeInternal, "detach %s: %v", req.Target, err)
	}
	removed := cidrs
	if len(cidrs) == 0 {
		removed = e.CIDRs
		delete(s.m, key)
	} else {
		e.CIDRs = slices.DeleteFunc(e.CIDRs, func(c netip.Prefix) bool { return slices.Contains(cidrs, c) })
	}
	d.release(id, ifName, cidrs)
	if err := s.saveLocked(); err != nil {
		return api.Endpoint{}, api.Errorf(api.CodeInternal, "%v", err)
	}
	d.log.Info("detached", "netns", nsPath, "id", id, "cidrs", prefixesToStrings(removed))
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
	e := s.m[key]
	for _, c := range cidrs {
		if err := d.links.Expose(d.cfg.Bridge, c); err != nil {
			return api.Endpoint{}, api.Errorf(api.CodeInternal, "expose %s: %v", c, err)
		}
	}
	if e == nil {
		e = &endpoint{ID: api.ExposeID, IfName: d.cfg.Bridge, HostIf: d.cfg.Bridge, MAC: d.name.String()}
		s.m[key] = e
	}
	for _, c := range cidrs {
		if !slices.Contains(e.CIDRs, c) {
			e.CIDRs = append(e.CIDRs, c)
		}
	}
	if err := s.saveLocked(); err != nil {
		return api.Endpoint{}, api.Errorf(api.CodeInternal, "%v", err)
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
	if len(cidrs) == 0 {
		cidrs = slices.Clone(e.CIDRs)
	}
	for _, c := range cidrs {
		if err := d.links.Hide(d.cfg.Bridge, c); err != nil {
			return api.Endpoint{}, api.Errorf(api.CodeInternal, "hide %s: %v", c, err)
		}
	}
	e.CIDRs = slices.DeleteFunc(e.CIDRs, func(c netip.Prefix) bool { return slices.Contains(cidrs, c) })
	if len(e.CIDRs) == 0 {
		delete(s.m, key)
	}
	d.release(api.ExposeID, d.cfg.Bridge, cidrs)
	if err := s.saveLocked(); err != nil {
		return api.Endpoint{}, api.Errorf(api.CodeInternal, "%v", err)
	}
	return api.Endpoint{ID: api.ExposeID, MAC: e.MAC, CIDRs: prefixesToStrings(cidrs)}, nil
}

// endpointList is what ps and the report show; endpoints whose namespace is gone are left out.
func (d *Daemon) endpointList() []api.Endpoint {
	s := d.endpoints
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []api.Endpoint{}
	for _, e := range s.listLocked() {
		if e.NetnsPath != "" {
			if _, err := os.Stat(e.NetnsPath); err != nil {
				continue
			}
		}
		out = append(out, api.Endpoint{ID: e.ID, MAC: e.MAC, CIDRs: prefixesToStrings(e.CIDRs)})
	}
	return out
}
