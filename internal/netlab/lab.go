package netlab

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weavemesh/weave/internal/logx"
	"github.com/weavemesh/weave/internal/testutil"
)

const (
	// PrefixRoot starts the name of everything a lab creates. Sweep only ever looks at names
	// that start with it.
	PrefixRoot = "wl"

	// stateRoot holds one directory per live lab with the owner's PID and start time, which is
	// what Sweep trusts to decide that a lab is abandoned.
	stateRoot = "/run/weave-netlab"

	// UnderlayLink is the name of every host's (and NAT's) link to the underlay bridge.
	UnderlayLink = "eth0"
	// natLANLink is the NAT namespace's link to the host behind it.
	natLANLink = "lan0"
	// underlayBridge is the bridge in the underlay namespace.
	underlayBridge = "br0"

	maxHosts   = 200
	buildLimit = 2 * time.Minute
)

// Options describe the lab to build.
type Options struct {
	// Hosts is the number of hosts (at least 1, at most 200).
	Hosts int
	// MTU of every underlay link (host, NAT and bridge port); 0 means 1500.
	MTU int
	// NAT lists 0-based indexes into Lab.Hosts of hosts placed behind their own NAT namespace,
	// which masquerades their traffic to the underlay: they can dial out, nobody can dial in.
	NAT []int
	// Dir receives process logs and any state of the lab. Empty: a new temporary directory
	// that Close removes unless KeepDir is set.
	Dir string
	// KeepDir keeps a temporary Dir after Close (for looking at logs of a demo or bench run).
	KeepDir bool
	// Logger receives the lab's own progress; nil discards it (New logs to the test).
	Logger *slog.Logger
}

// Lab is a set of namespaces making up one test network. Its methods are safe for concurrent
// use; Close tears everything down and is idempotent.
type Lab struct {
	// Prefix starts the name of every namespace of this lab, e.g. "wlk3x91a2b".
	Prefix string
	// Hosts are the hosts, named "<Prefix>-h1", "<Prefix>-h2", ...
	Hosts []*Host
	// Dir holds the logs of processes started in the lab.
	Dir string
	// Underlay is the name of the namespace holding the underlay bridge.
	Underlay string

	log    *slog.Logger
	mtu    int
	ownDir bool
	keep   bool

	mu         sync.Mutex
	namespaces []string // creation order; torn down in reverse
	procs      []*Proc
	closed     bool

	closeOnce sync.Once
	closeErr  error
}

// New builds a lab for a test: it fails the test when the lab cannot be built and registers its
// teardown with t.Cleanup, which also runs when the test fails or panics. On failure the tails of
// the logs of processes started in the lab are written to the test log.
func New(t testing.TB, opts Options) *Lab {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireCommands(t, "ip", "iptables")
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(testWriter{t}, nil))
	}
	ctx, cancel := context.WithTimeout(context.Background(), buildLimit)
	defer cancel()
	lab, err := Build(ctx, opts)
	if err != nil {
		t.Fatalf("build lab: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			lab.dumpLogs(t)
		}
		if err := lab.Close(); err != nil {
			t.Errorf("tear down lab %s: %v", lab.Prefix, err)
		}
	})
	return lab
}

// Build creates a lab outside of a test (demo, bench). The caller must Close it, also on error
// paths; a crashed caller's leftovers are removed by the next Sweep.
func Build(ctx context.Context, opts Options) (_ *Lab, err error) {
	if err := validate(opts); err != nil {
		return nil, err
	}
	if err := checkPlatform(); err != nil {
		return nil, err
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if err := Sweep(PrefixRoot); err != nil {
		// A leftover we could not remove does not stop us: our names are unique.
		log.Warn("sweep of stale labs failed", logx.KeyErr, err)
	}
	prefix, err := newPrefix(os.Getpid())
	if err != nil {
		return nil, err
	}
	l := &Lab{
		Prefix:   prefix,
		Dir:      opts.Dir,
		Underlay: prefix + "-u",
		log:      log.With(logx.KeyNetns, prefix),
		mtu:      opts.MTU,
		keep:     opts.KeepDir,
	}
	if l.mtu == 0 {
		l.mtu = 1500
	}
	if l.Dir == "" {
		if l.Dir, err = os.MkdirTemp("", prefix+"-"); err != nil {
			return nil, fmt.Errorf("create lab dir: %w", err)
		}
		l.ownDir = true
	}
	// The owner record goes first, so that a parallel Sweep never mistakes our half-built
	// namespaces for leftovers.
	if err := writeOwner(prefix, l.Dir); err != nil {
		if l.ownDir {
			os.RemoveAll(l.Dir)
		}
		return nil, err
	}
	defer func() {
		if err != nil {
			if cerr := l.Close(); cerr != nil {
				err = errors.Join(err, cerr)
			}
		}
	}()
	if err := l.buildUnderlay(ctx); err != nil {
		return nil, err
	}
	for i := range opts.Hosts {
		h, err := l.buildHost(ctx, i, slices.Contains(opts.NAT, i))
		if err != nil {
			return nil, err
		}
		l.Hosts = append(l.Hosts, h)
	}
	// mode says which hosts sit behind a NAT
	l.log.Info("lab built", logx.KeyCount, len(l.Hosts), logx.KeyMode, fmt.Sprintf("nat=%v", opts.NAT), logx.KeyMTU, l.mtu,
		logx.KeyPath, l.Dir)
	return l, nil
}

func validate(opts Options) error {
	if opts.Hosts < 1 || opts.Hosts > maxHosts {
		return fmt.Errorf("netlab: %d hosts: need 1 to %d", opts.Hosts, maxHosts)
	}
	if opts.MTU != 0 && (opts.MTU < 576 || opts.MTU > 65535) {
		return fmt.Errorf("netlab: underlay MTU %d out of range 576..65535", opts.MTU)
	}
	seen := map[int]bool{}
	for _, i := range opts.NAT {
		if i < 0 || i >= opts.Hosts {
			return fmt.Errorf("netlab: NAT host index %d out of range 0..%d", i, opts.Hosts-1)
		}
		if seen[i] {
			return fmt.Errorf("netlab: NAT host index %d given twice", i)
		}
		seen[i] = true
	}
	return nil
}

// newPrefix returns "wl" + 4 random base36 characters + the owner's PID in base36. The random
// part keeps two labs of one process apart; the PID lets Sweep find the owner even when the
// owner record is gone.
func newPrefix(pid int) (string, error) {
	const digits = "0123456789abcdefghijklmnopqrstuvwxyz"
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("netlab: random prefix: %w", err)
	}
	for i := range b {
		b[i] = digits[int(b[i])%len(digits)]
	}
	return PrefixRoot + string(b[:]) + strconv.FormatInt(int64(pid), 36), nil
}

// parsePrefix splits a namespace name made by this package into its lab prefix and the
// owner PID encoded in it.
func parsePrefix(root, name string) (prefix string, pid int, ok bool) {
	prefix, _, _ = strings.Cut(name, "-")
	rest, found := strings.CutPrefix(prefix, root)
	if !found || len(rest) < 5 || len(rest) > 4+7 {
		return "", 0, false
	}
	for _, c := range rest {
		if (c < '0' || c > '9') && (c < 'a' || c > 'z') {
			return "", 0, false
		}
	}
	p, err := strconv.ParseInt(rest[4:], 36, 64)
	if err != nil || p <= 0 || p > 1<<22 {
		return "", 0, false
	}
	return prefix, int(p), true
}

func (l *Lab) buildUnderlay(ctx context.Context) error {
	if err := l.addNetns(ctx, l.Underlay); err != nil {
		return err
	}
	return l.ipAll(ctx, l.Underlay,
		[]string{"link", "add", "name", underlayBridge, "mtu", strconv.Itoa(l.mtu), "type", "bridge"},
		[]string{"link", "set", underlayBridge, "up"},
	)
}

// underlayAddr is the address of host index i (or of the NAT in front of it) on the underlay.
func underlayAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 201, 0, byte(i + 1)}) }

// natPrivate returns the NAT's and the host's addresses on the private link of host index i.
func natPrivate(i int) (router, host netip.Addr) {
	return netip.AddrFrom4([4]byte{10, 202, byte(i + 1), 1}), netip.AddrFrom4([4]byte{10, 202, byte(i + 1), 2})
}

// portName is the name of the underlay bridge port of host index i (unique in the underlay).
func portName(i int) string { return "h" + strconv.Itoa(i+1) }

func (l *Lab) buildHost(ctx context.Context, i int, natted bool) (*Host, error) {
	h := &Host{
		Name:       fmt.Sprintf("%s-h%d", l.Prefix, i+1),
		Index:      i,
		Addr:       underlayAddr(i),
		PublicAddr: underlayAddr(i),
		lab:        l,
	}
	if err := l.addNetns(ctx, h.Name); err != nil {
		return nil, err
	}
	// The namespace that owns the public underlay address: the host itself, or its NAT.
	edge := h.Name
	if natted {
		h.NAT = fmt.Sprintf("%s-n%d", l.Prefix, i+1)
		edge = h.NAT
		if err := l.addNetns(ctx, h.NAT); err != nil {
			return nil, err
		}
	}
	if err := l.veth(ctx, edge, UnderlayLink, l.Underlay, portName(i), l.mtu); err != nil {
		return nil, err
	}
	if err := l.ipAll(ctx, l.Underlay, []string{"link", "set", portName(i), "master", underlayBridge, "up"}); err != nil {
		return nil, err
	}
	if err := l.ipAll(ctx, edge,
		[]string{"addr", "add", underlayAddr(i).String() + "/24", "dev", UnderlayLink},
		[]string{"link", "set", UnderlayLink, "up"},
	); err != nil {
		return nil, err
	}
	if !natted {
		return h, nil
	}
	router, private := natPrivate(i)
	h.Addr = private
	if err := l.veth(ctx, h.NAT, natLANLink, h.Name, UnderlayLink, l.mtu); err != nil {
		return nil, err
	}
	if err := l.ipAll(ctx, h.NAT,
		[]string{"addr", "add", router.String() + "/24", "dev", natLANLink},
		[]string{"link", "set", natLANLink, "up"},
	); err != nil {
		return nil, err
	}
	if err := l.ipAll(ctx, h.Name,
		[]string{"addr", "add", private.String() + "/24", "dev", UnderlayLink},
		[]string{"link", "set", UnderlayLink, "up"},
		[]string{"route", "add", "default", "via", router.String()},
	); err != nil {
		return nil, err
	}
	// A stateful masquerading NAT: anything from the private side goes out with the NAT's
	// address, only replies come back in.
	for _, argv := range [][]string{
		{"sysctl", "-qw", "net.ipv4.ip_forward=1"},
		{"iptables", "-w", "-P", "FORWARD", "DROP"},
		{"iptables", "-w", "-A", "FORWARD", "-i", natLANLink, "-o", UnderlayLink, "-j", "ACCEPT"},
		{"iptables", "-w", "-A", "FORWARD", "-i", UnderlayLink, "-o", natLANLink, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"},
		{"iptables", "-w", "-t", "nat", "-A", "POSTROUTING", "-o", UnderlayLink, "-j", "MASQUERADE"},
	} {
		if _, err := l.RunIn(ctx, h.NAT, argv...); err != nil {
			return nil, fmt.Errorf("set up nat for %s: %w", h.Name, err)
		}
	}
	return h, nil
}

// addNetns creates a namespace with loopback up and registers it for teardown.
func (l *Lab) addNetns(ctx context.Context, name string) error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return fmt.Errorf("netlab: lab %s is closed", l.Prefix)
	}
	l.mu.Unlock()
	if _, err := runCmd(ctx, "ip", "netns", "add", name); err != nil {
		return fmt.Errorf("create netns: %w", err)
	}
	l.mu.Lock()
	l.namespaces = append(l.namespaces, name)
	l.mu.Unlock()
	return l.ipAll(ctx, name, []string{"link", "set", "lo", "up"})
}

// veth creates a veth pair with one end in each namespace, directly, so that nothing ever
// appears in the root namespace.
func (l *Lab) veth(ctx context.Context, nsA, nameA, nsB, nameB string, mtu int) error {
	m := strconv.Itoa(mtu)
	_, err := runCmd(ctx, "ip", "-n", nsA, "link", "add", "name", nameA, "mtu", m,
		"type", "veth", "peer", "name", nameB, "mtu", m, "netns", nsB)
	if err != nil {
		return fmt.Errorf("create veth %s/%s-%s/%s: %w", nsA, nameA, nsB, nameB, err)
	}
	return nil
}

// ipAll runs each argument list as an `ip` command in namespace ns, stopping at the first error.
func (l *Lab) ipAll(ctx context.Context, ns string, cmds ...[]string) error {
	for _, c := range cmds {
		if _, err := runCmd(ctx, "ip", append([]string{"-n", ns}, c...)...); err != nil {
			return err
		}
	}
	return nil
}

// RunIn runs argv in any namespace of the lab (a host, a container, a NAT or the underlay) and
// returns its combined output; the error includes the output.
func (l *Lab) RunIn(ctx context.Context, ns string, argv ...string) ([]byte, error) {
	if len(argv) == 0 {
		return nil, errors.New("netlab: empty command")
	}
	return runCmd(ctx, "ip", append([]string{"netns", "exec", ns}, argv...)...)
}

func runCmd(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

// Netns returns the names of all namespaces of the lab, in creation order.
func (l *Lab) Netns() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.namespaces)
}

// Close stops every process started in the lab, kills whatever else still runs in its
// namespaces, deletes the namespaces (and with them every link) and the owner record. It is
// idempotent and safe to call on a half-built lab.
func (l *Lab) Close() error {
	l.closeOnce.Do(func() { l.closeErr = l.teardown() })
	return l.closeErr
}

func (l *Lab) teardown() error {
	l.mu.Lock()
	l.closed = true
	procs := slices.Clone(l.procs)
	namespaces := slices.Clone(l.namespaces)
	l.mu.Unlock()

	var errs []error
	for _, p := range slices.Backward(procs) {
		if err := p.Stop(); err != nil {
			// A process that had failed on its own is the test's business, not a teardown error.
			l.log.Debug("process ended with error", logx.KeyErr, fmt.Errorf("%s: %w", p.Name, err))
		}
	}
	for _, ns := range slices.Backward(namespaces) {
		if err := deleteNetns(ns); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(filepath.Join(stateRoot, l.Prefix)); err != nil {
		errs = append(errs, fmt.Errorf("remove owner record: %w", err))
	}
	if l.ownDir && !l.keep {
		if err := os.RemoveAll(l.Dir); err != nil {
			errs = append(errs, fmt.Errorf("remove lab dir: %w", err))
		}
	}
	l.log.Info("lab torn down", logx.KeyCount, len(namespaces), logx.KeyErr, errors.Join(errs...))
	return errors.Join(errs...)
}

func (l *Lab) dumpLogs(t testing.TB) {
	l.mu.Lock()
	procs := slices.Clone(l.procs)
	l.mu.Unlock()
	for _, p := range procs {
		t.Logf("--- log of %s (%s), last 4 KiB ---\n%s", p.Name, p.LogPath, tail(p.Log(), 4096))
	}
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

// WaitFor polls cond with a short backoff until it returns nil, or fails with its last error
// when timeout passes or ctx ends. It is the lab's way to wait for a condition.
func WaitFor(ctx context.Context, timeout time.Duration, cond func() error) error {
	return testutil.WaitFor(ctx, timeout, cond)
}

// testWriter sends the lab's logs to the test log, so they show up with the failure.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
