package mesh

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The connection maker: it dials targets (command line, Connect, and, unless NoDiscovery,
// peers learned from the topology), with jittered exponential backoff. It never dials a
// peer we already have a connection with, whichever side dialled, so a NATed peer that can
// only dial out stays a full member through the connection it made.

type targetState int

const (
	targetWaiting targetState = iota
	targetAttempting
	targetConnected
	targetFailed
	targetSuspended // never retried: it is ourselves
)

func (s targetState) String() string {
	return [...]string{"waiting", "attempting", "connected", "failed", "suspended"}[s]
}

type target struct {
	addr     string // host:port as dialled
	portless bool   // given without a port: skipped while any connection from that host exists
	direct   bool   // command line / Connect (persisted); otherwise discovered
	peer     PeerName
	state    targetState
	lastErr  error
	attempts int
	interval time.Duration
	tryAfter time.Time
	lastTry  time.Time
}

// backoff returns the next retry interval: initial at first, then ×1.5, capped.
func backoff(cur time.Duration) time.Duration {
	if cur <= 0 {
		return retryInitial
	}
	return min(time.Duration(float64(cur)*1.5), retryMax)
}

// jitter spreads d uniformly over [d/2, 3d/2) so peers that failed together do not retry
// together.
func jitter(d time.Duration, f float64) time.Duration {
	return d/2 + time.Duration(f*float64(d))
}

// normalizeTarget turns host[:port] into host:port and reports whether the port was given.
func normalizeTarget(s string, defPort int) (addr string, portless bool, err error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", false, errors.New("empty address")
	}
	if host, port, err := net.SplitHostPort(s); err == nil {
		p, perr := strconv.Atoi(port)
		if perr != nil || p <= 0 || p > 65535 || host == "" {
			return "", false, fmt.Errorf("bad port in %q", s)
		}
		return net.JoinHostPort(host, port), false, nil
	}
	host := strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
	if strings.ContainsAny(host, "/ []") {
		return "", false, fmt.Errorf("bad host %q", s)
	}
	if strings.Contains(host, ":") {
		if _, err := netip.ParseAddr(host); err != nil {
			return "", false, fmt.Errorf("bad address %q", s)
		}
	}
	return net.JoinHostPort(host, strconv.Itoa(defPort)), true, nil
}

func (r *Router) addTargetLocked(s string) error {
	addr, portless, err := normalizeTarget(s, r.cfg.Port)
	if err != nil {
		return err
	}
	if t := r.targets[addr]; t != nil {
		t.direct = true
		if t.state == targetFailed || t.state == targetSuspended {
			t.state, t.tryAfter, t.interval = targetWaiting, time.Time{}, 0
		}
		return nil
	}
	r.targets[addr] = &target{addr: addr, portless: portless, direct: true}
	return nil
}

// Connect adds targets (host[:port]) to dial; with replace, direct targets not listed are
// forgotten. The direct targets are persisted in the state dir.
func (r *Router) Connect(targets []string, replace bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	keep := map[string]bool{}
	for _, s := range targets {
		addr, _, err := normalizeTarget(s, r.cfg.Port)
		if err != nil {
			return fmt.Errorf("connect %q: %w", s, err)
		}
		keep[addr] = true
	}
	// The new list is on disk before anything is dialled or forgotten: a state dir that
	// cannot be written refuses the connect with nothing changed, instead of dialling a
	// target that the next start would not know.
	next := maps.Clone(keep)
	if !replace {
		for addr, t := range r.targets {
			if t.direct {
				next[addr] = true
			}
		}
	}
	if err := r.persistTargetsLocked(slices.Sorted(maps.Keys(next))); err != nil {
		return err
	}
	if replace {
		for addr, t := range r.targets {
			if t.direct && !keep[addr] {
				r.forgetLocked(addr)
			}
		}
	}
	for _, s := range targets {
		if err := r.addTargetLocked(s); err != nil {
			return fmt.Errorf("connect %q: %w", s, err)
		}
	}
	r.kick()
	return nil
}

// Forget removes targets; existing connections stay up, but are not re-established.
func (r *Router) Forget(targets []string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	drop := map[string]bool{}
	for _, s := range targets {
		addr, _, err := normalizeTarget(s, r.cfg.Port)
		if err != nil {
			return fmt.Errorf("forget %q: %w", s, err)
		}
		drop[addr] = true
	}
	// As in Connect: on disk first, so a failed forget forgets nothing.
	next := slices.DeleteFunc(r.directTargetsLocked(), func(a string) bool { return drop[a] })
	if err := r.persistTargetsLocked(next); err != nil {
		return err
	}
	for addr := range drop {
		r.forgetLocked(addr)
	}
	return nil
}

func (r *Router) forgetLocked(addr string) {
	if t := r.targets[addr]; t != nil {
		if t.state == targetAttempting {
			t.direct = false // let the attempt finish; the target is dropped afterwards
			return
		}
		delete(r.targets, addr)
	}
}

// Targets returns the direct targets (command line and Connect), sorted.
func (r *Router) Targets() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.directTargetsLocked()
}

func (r *Router) directTargetsLocked() []string {
	var out []string
	for addr, t := range r.targets {
		if t.direct {
			out = append(out, addr)
		}
	}
	slices.Sort(out)
	return out
}

// persistTargetsLocked writes the direct targets list.
func (r *Router) persistTargetsLocked(direct []string) error {
	if r.cfg.StateDir == "" {
		return nil
	}
	data := strings.Join(direct, "\n")
	if data != "" {
		data += "\n"
	}
	if err := os.MkdirAll(r.cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("persist targets: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(r.cfg.StateDir, targetsFile), []byte(data)); err != nil {
		return fmt.Errorf("persist targets: %w", err)
	}
	return nil
}

func loadTargets(stateDir string) ([]string, error) {
	if stateDir == "" {
		return nil, nil
	}
	f, err := os.Open(filepath.Join(stateDir, targetsFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load targets: %w", err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("load targets: %w", err)
	}
	return out, nil
}

// discoverLocked adds a target for each peer that someone reports a connection to and we
// are not connected to: its address if that connection was outbound (a listening
// address), else its IP with our port (inbound ports are ephemeral).
func (r *Router) discoverLocked() {
	want := map[string]PeerName{}
	if !r.cfg.NoDiscovery {
		for _, e := range r.topo.peers {
			for _, c := range e.Conns {
				if c.Name == r.cfg.Name || r.conns[c.Name] != nil || c.Addr == "" {
					continue
				}
				addr := c.Addr
				if !c.Outbound {
					host, _, err := net.SplitHostPort(c.Addr)
					if err != nil {
						continue
					}
					addr = net.JoinHostPort(host, strconv.Itoa(r.cfg.Port))
				}
				want[addr] = c.Name
			}
		}
	}
	for addr, t := range r.targets {
		if !t.direct && t.state != targetAttempting {
			if _, ok := want[addr]; !ok {
				delete(r.targets, addr)
			}
		}
	}
	for addr, name := range want {
		if r.targets[addr] == nil {
			r.targets[addr] = &target{addr: addr, peer: name}
		}
	}
}

// connMakerLocked starts the dials that are due and returns when it next needs to run.
func (r *Router) connMakerLocked(now time.Time) time.Time {
	next := now.Add(r.cfg.TopologyInterval)
	if !r.ready.Load() {
		return next
	}
	r.discoverLocked()
	hostsConnected := map[string]bool{}
	for _, c := range r.conns {
		if h, _, err := net.SplitHostPort(c.remote); err == nil {
			hostsConnected[h] = true
		}
	}
	for _, t := range r.targets {
		switch t.state {
		case targetAttempting, targetSuspended:
			continue
		}
		if t.peer != UnknownPeerName && (r.conns[t.peer] != nil || t.peer == r.cfg.Name) {
			t.state = targetConnected
			continue
		}
		if t.portless {
			if h, _, _ := net.SplitHostPort(t.addr); hostsConnected[h] {
				t.state = targetConnected
				continue
			}
		}
		if t.state == targetConnected {
			t.state = targetWaiting
		}
		if now.Before(t.tryAfter) {
			if t.tryAfter.Before(next) {
				next = t.tryAfter
			}
			continue
		}
		if len(r.conns)+r.attemptingLocked() >= r.cfg.ConnLimit {
			continue
		}
		t.state = targetAttempting
		t.attempts++
		t.lastTry = now
		r.dial(t.addr)
	}
	return next
}

func (r *Router) attemptingLocked() int {
	n := 0
	for _, t := range r.targets {
		if t.state == targetAttempting {
			n++
		}
	}
	return n
}

// dial starts one attempt in its own goroutine (mu held; the goroutine takes it later).
func (r *Router) dial(addr string) {
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		ctx, cancel := context.WithTimeout(r.ctx, r.cfg.DialTimeout)
		nc, err := r.cfg.Transport.Dial(ctx, addr)
		cancel()
		if err != nil {
			r.mu.Lock()
			r.attemptDoneLocked(addr, fmt.Errorf("dial: %w", err))
			r.mu.Unlock()
			r.kick()
			return
		}
		r.startHandshake(nc, true, addr, nil)
		r.kick()
	}()
}

// attemptDoneLocked records the outcome of an attempt on target addr.
func (r *Router) attemptDoneLocked(addr string, err error) {
	t := r.targets[addr]
	if t == nil {
		return
	}
	now := time.Now()
	if err == nil {
		t.state, t.lastErr, t.interval = targetConnected, nil, 0
		return
	}
	if errors.Is(err, ErrConnectToSelf) {
		t.state, t.lastErr, t.peer = targetSuspended, err, r.cfg.Name
		return
	}
	if errors.Is(err, ErrDuplicateConn) {
		// The peer is connected through another connection: nothing to retry now.
		t.state, t.lastErr = targetConnected, nil
		return
	}
	// Discovered targets back off like direct ones (a NATed peer would otherwise be dialled
	// again on every topology update); they are dropped once nobody reports them.
	t.state, t.lastErr = targetFailed, err
	t.interval = backoff(t.interval)
	t.tryAfter = now.Add(jitter(t.interval, r.rng.Float64()))
}

// connDownTargetLocked re-arms the target whose connection just ended: at once if the
// connection had lived long, else after the backoff.
func (r *Router) connDownTargetLocked(mc *meshConn, err error) {
	for _, t := range r.targets {
		if t.peer != mc.intro.Name || t.state == targetAttempting || t.state == targetSuspended {
			continue
		}
		t.state, t.lastErr = targetWaiting, err
		if err != nil && mc.refused.Load() != nil {
			t.state = targetFailed
		}
		if time.Since(mc.since) > retryReset {
			t.interval, t.tryAfter = 0, time.Time{}
		} else {
			t.interval = backoff(t.interval)
			t.tryAfter = time.Now().Add(jitter(t.interval, r.rng.Float64()))
		}
	}
}
