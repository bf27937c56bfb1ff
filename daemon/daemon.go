// Package daemon is the composition root of weaver: it wires identity, mesh, host plumbing
// and the control API together, and owns their lifecycle (New, Start, Close, Wait). Only
// cmd/weaver and the tests import it.
package daemon

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weavemesh/weave/fastdp"
	"github.com/weavemesh/weave/internal/logx"
	"github.com/weavemesh/weave/internal/netdev"
	"github.com/weavemesh/weave/ipam"
	"github.com/weavemesh/weave/mesh"
	"github.com/weavemesh/weave/sleeve"
)

// The default container MTU is the underlay's minus the sleeve's overhead and the inner
// Ethernet header (Weave's 62 plain, 86 sealed: 1500 gives 1438 or 1414); the sleeve's is
// larger than VXLAN's 50, so one MTU fits every overlay.
const (
	sleeveOverheadPlain  = sleeve.OverheadPlain + 14
	sleeveOverheadSealed = sleeve.OverheadSealed + 14
	fallbackUnderlayMTU  = 1500
)

// Daemon is one running router.
type Daemon struct {
	cfg   Config
	log   *slog.Logger
	links netdev.Links

	name mesh.PeerName
	uid  uint64
	mtu  int

	lockFile   *os.File
	bridgeLock io.Closer // this process owns the bridge in this network namespace
	endpoints  *endpointStore
	epEvents   endpointEvents
	exposeMu   sync.Mutex // serialises expose, which may allocate
	mesh       *mesh.Router
	ipam       *ipam.Allocator
	peers      *meshPeers
	bg         sync.WaitGroup // background work (claims) that Close waits for
	bgCtx      context.Context
	bgCancel   context.CancelFunc
	dp         *dataPlane
	apiLn      net.Listener
	apiSrv     *http.Server
	apiRefused apiRefusals
	metricsSrv *http.Server

	started time.Time
	ready   chan struct{}

	closeOnce sync.Once
	done      chan struct{} // closed when Close has finished
	stopReq   chan struct{} // closed when the API asked us to stop
	stopOnce  sync.Once
	resetReq  atomic.Bool // Close also removes devices and state

	errMu sync.Mutex
	err   error // first fatal error
}

// New checks the configuration, takes the state dir's lock and loads the identity. It
// creates nothing on the host yet; Start does.
func New(cfg Config) (*Daemon, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("invalid configuration: %w", err)
	}
	if cfg.Links == nil {
		cfg.Links = netdev.Netlink{}
	}
	if cfg.NickName == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("no --nickname and no hostname: %w", err)
		}
		cfg.NickName = h
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	// A router that was just stopped may still be closing its devices after its socket is
	// gone (weavectl stop returns then): wait a little for its lock rather than failing.
	lock, err := lockStateDir(cfg.StateDir, 5*time.Second)
	if err != nil {
		return nil, err
	}
	// Start changes devices only as the bridge's owner; a stopping router may still hold it.
	bridgeLock, err := lockBridge(cfg.Bridge, 5*time.Second)
	if err != nil {
		lock.Close()
		return nil, err
	}
	fail := func(err error) (*Daemon, error) {
		bridgeLock.Close()
		lock.Close()
		return nil, err
	}
	name, err := mesh.LoadOrCreateName(cfg.StateDir, cfg.Name)
	if err != nil {
		return fail(fmt.Errorf("peer identity: %w", err))
	}
	eps, err := loadEndpoints(cfg.StateDir)
	if err != nil {
		return fail(err)
	}
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return fail(fmt.Errorf("random uid: %w", err))
	}
	d := &Daemon{
		cfg:        cfg,
		log:        cfg.Logger.With(logx.KeyLocal, name.String()),
		links:      cfg.Links,
		name:       name,
		uid:        binary.BigEndian.Uint64(b[:]) | 1,
		lockFile:   lock,
		bridgeLock: bridgeLock,
		endpoints:  eps,
		ready:      make(chan struct{}),
		done:       make(chan struct{}),
		stopReq:    make(chan struct{}),
	}
	return d, nil
}

// lockStateDir makes sure only one weaver uses a state dir: a second one would fight over
// identity and IPAM.
// A positive wait retries for that long, for a caller that expects a stopping daemon to let go.
func lockStateDir(dir string, wait time.Duration) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, "weaver.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open state dir lock: %w", err)
	}
	deadline := time.Now().Add(wait)
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock state dir: %w", err)
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("another weaver is already running with state dir %s", dir)
		}
		time.Sleep(50 * time.Millisecond) // flock has no timeout of its own
	}
	if err := f.Truncate(0); err == nil {
		fmt.Fprintf(f, "%d\n", os.Getpid())
	}
	return f, nil
}

// Name is the peer name.
func (d *Daemon) Name() mesh.PeerName { return d.name }

// Start creates the bridge and TAP, starts the mesh and serves the API. It does not block.
//
// A failure anywhere unwinds everything Start did, in reverse, through one path: the
// components it opened are closed and the devices it created (not the ones it found, which
// may carry a stopped router's containers) are removed, so a refused launch leaves the host
// as it was. Close after a failed Start only releases the locks.
func (d *Daemon) Start() (err error) {
	d.started = time.Now()
	var undo []func()
	defer func() {
		if err == nil {
			return
		}
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}()
	mtu, err := d.containerMTU()
	if err != nil {
		return err
	}
	d.mtu = mtu
	nb := d.name.Bytes()
	mac := net.HardwareAddr(nb[:])
	// removeIfNew registers the removal of a device that does not exist yet.
	removeIfNew := func(name string, remove func(string) error) error {
		ok, err := d.links.Exists(name)
		if err != nil {
			return err
		}
		if !ok {
			undo = append(undo, func() {
				if err := remove(name); err != nil {
					d.log.Warn("cannot remove a device it created after a failed start", logx.KeyDevice, name, logx.KeyErr, err)
				}
			})
		}
		return nil
	}
	if err := removeIfNew(d.cfg.Bridge, d.links.Delete); err != nil {
		return fmt.Errorf("bridge: %w", err)
	}
	if err := d.links.EnsureBridge(d.cfg.Bridge, mac, mtu); err != nil {
		return fmt.Errorf("bridge: %w", err)
	}
	if err := removeIfNew(d.cfg.TAP, d.links.Delete); err != nil {
		return fmt.Errorf("tap: %w", err)
	}
	if err := d.links.EnsureTAP(d.cfg.TAP, d.cfg.Bridge, mtu); err != nil {
		return fmt.Errorf("tap: %w", err)
	}
	if !d.cfg.NoFastDP && d.cfg.Datapath != DatapathOVS {
		vx := fastdp.DefaultDevice(d.cfg.Port + 1)
		if err := removeIfNew(vx, func(n string) error { return fastdp.Cleanup("", n) }); err != nil {
			return fmt.Errorf("fastdp: %w", err)
		}
	}
	dp, err := d.newDataPlane()
	if err != nil {
		return fmt.Errorf("data plane: %w", err)
	}
	undo = append(undo, func() { dp.close() })
	mcfg := mesh.Config{
		Name:           d.name,
		NickName:       d.cfg.NickName,
		UID:            d.uid,
		Port:           d.cfg.Port,
		Password:       d.cfg.Password,
		StateDir:       d.cfg.StateDir,
		ConnLimit:      d.cfg.ConnLimit,
		NoDiscovery:    d.cfg.NoDiscovery,
		TrustedSubnets: d.cfg.TrustedSubnets,
		Peers:          d.cfg.Peers,
		Logger:         d.cfg.Logger, // mesh adds its own component and peer keys
		Transport:      d.cfg.Env.MeshTransport,
		ListenAddr:     d.cfg.Env.MeshListenAddr,
	}
	dp.configureMesh(&mcfg)
	m, err := mesh.New(mcfg)
	if err != nil {
		return fmt.Errorf("mesh: %w", err)
	}
	undo = append(undo, func() { m.Close() })
	if err := d.newIPAM(m); err != nil {
		return err
	}
	undo = append(undo, func() {
		if d.ipam != nil {
			d.ipam.Close()
			d.ipam = nil
		}
	})
	// Before the API serves and before the records' addresses are re-claimed: what a
	// killed daemon left half-done is undone, what a gone container held is released.
	d.reconcileEndpoints()
	if err := m.Start(); err != nil {
		return fmt.Errorf("mesh: %w", err)
	}
	d.mesh = m
	// Nothing a remote peer claims stops the mesh (a peer-name conflict is refused per
	// connection, weave_mesh_refused_total{reason="name_in_use"}); it ends only with Close.
	undo = append(undo, func() { d.mesh = nil })
	d.bgCtx, d.bgCancel = context.WithCancel(context.Background())
	undo = append(undo, func() { d.bgCancel(); d.bg.Wait() }) // before the allocator closes
	d.startIPAMBackground()
	if err := dp.start(m); err != nil {
		return fmt.Errorf("data plane: %w", err)
	}
	d.dp = dp
	undo = append(undo, func() { d.dp = nil })
	if err := d.serveMetrics(); err != nil {
		return err
	}
	undo = append(undo, func() {
		if d.metricsSrv != nil {
			d.metricsSrv.Close()
			d.metricsSrv = nil
		}
	})
	if err := d.serveAPI(); err != nil {
		return err
	}
	close(d.ready)
	d.log.Info("router started", logx.KeyNickname, d.cfg.NickName, logx.KeyPort, d.cfg.Port, logx.KeyMTU, mtu,
		logx.KeyEncrypted, len(d.cfg.Password) > 0, logx.KeyPath, d.cfg.Socket)
	return nil
}

func (d *Daemon) containerMTU() (int, error) {
	if d.cfg.MTU != 0 {
		return d.cfg.MTU, nil
	}
	under, err := d.links.UnderlayMTU()
	if err != nil {
		d.log.Warn("cannot read the underlay MTU; assuming 1500", logx.KeyErr, err)
		under = fallbackUnderlayMTU
	}
	overhead := sleeveOverheadPlain
	if len(d.cfg.Password) > 0 {
		overhead = sleeveOverheadSealed
	}
	return under - overhead, nil
}

func (d *Daemon) serveAPI() error {
	dir := filepath.Dir(d.cfg.Socket)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create socket dir: %w", err)
	}
	// A socket left by a killed weaver blocks the listen; the state-dir lock proves it is stale
	// only when it is ours, so refuse to remove a socket another live daemon answers on.
	if c, err := net.DialTimeout("unix", d.cfg.Socket, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("another daemon answers on %s", d.cfg.Socket)
	}
	if err := os.Remove(d.cfg.Socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale socket: %w", err)
	}
	old := unix.Umask(0o177)
	ln, err := net.Listen("unix", d.cfg.Socket)
	unix.Umask(old)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", d.cfg.Socket, err)
	}
	if err := os.Chmod(d.cfg.Socket, 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("chmod socket: %w", err)
	}
	d.apiLn = ln
	d.apiSrv = &http.Server{Handler: d.apiHandler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := d.apiSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.fail(fmt.Errorf("api server: %w", err))
		}
	}()
	return nil
}

// fail records the first fatal error and asks Wait's caller to shut down.
func (d *Daemon) fail(err error) {
	d.errMu.Lock()
	if d.err == nil {
		d.err = err
	}
	d.errMu.Unlock()
	d.requestStop()
}

func (d *Daemon) requestStop() { d.stopOnce.Do(func() { close(d.stopReq) }) }

// Stopping is closed when the daemon wants to stop (API request or fatal error).
func (d *Daemon) Stopping() <-chan struct{} { return d.stopReq }

// Err returns the first fatal error, if any.
func (d *Daemon) Err() error {
	d.errMu.Lock()
	defer d.errMu.Unlock()
	return d.err
}

// Close stops the API and the mesh. It keeps the bridge, TAP and state so that a later
// start resumes. It is idempotent.
func (d *Daemon) Close() error {
	var errs []error
	d.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), d.cfg.ShutdownTimeout)
		defer cancel()
		if d.apiSrv != nil {
			if err := d.apiSrv.Shutdown(ctx); err != nil {
				errs = append(errs, fmt.Errorf("api shutdown: %w", err))
			}
			os.Remove(d.cfg.Socket)
		}
		if d.metricsSrv != nil {
			if err := d.metricsSrv.Shutdown(ctx); err != nil {
				errs = append(errs, fmt.Errorf("metrics shutdown: %w", err))
			}
		}
		if d.bgCancel != nil {
			d.bgCancel()
		}
		d.bg.Wait()
		if d.ipam != nil {
			if err := d.ipam.Close(); err != nil {
				errs = append(errs, fmt.Errorf("ipam: %w", err))
			}
		}
		if d.dp != nil {
			if err := d.dp.close(); err != nil {
				errs = append(errs, fmt.Errorf("data plane: %w", err))
			}
		}
		if d.mesh != nil {
			if err := d.mesh.Close(); err != nil {
				errs = append(errs, fmt.Errorf("mesh: %w", err))
			}
		}
		if d.resetReq.Load() {
			if err := cleanupHost(d.cfg); err != nil {
				errs = append(errs, fmt.Errorf("reset: %w", err))
			} else {
				d.log.Info("bridge, devices and state removed on reset")
			}
		}
		d.bridgeLock.Close()
		d.lockFile.Close()
		close(d.done)
		d.log.Info("router stopped")
	})
	return errors.Join(errs...)
}
