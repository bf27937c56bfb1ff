package ipam

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/weavemesh/weave/ipam/addr"
	"github.com/weavemesh/weave/mesh"
)

// DefaultRange is Weave's default allocation range.
var DefaultRange = netip.MustParsePrefix("10.32.0.0/12")

// ChannelName is the gossip channel the allocator registers with the mesh.
const ChannelName = "ipam"

// DefaultTickInterval paces retries (space and claim requests, Paxos re-proposals) and the
// reclaim check.
const DefaultTickInterval = 5 * time.Second

// Errors callers may test with errors.Is.
var (
	ErrClosed         = errors.New("ipam: allocator closed")
	ErrObserver       = errors.New("ipam: this peer is an observer and owns no address space")
	ErrAddressInUse   = errors.New("ipam: address already in use")
	ErrOutOfRange     = errors.New("ipam: address or subnet outside the allocation range")
	ErrBadArgument    = errors.New("ipam: bad argument")
	ErrPeerReachable  = errors.New("ipam: peer is reachable; stop it before removing it")
	ErrUnknownPeer    = errors.New("ipam: no such peer in the ring")
	ErrNoHeir         = errors.New("ipam: no reachable peer to hand our space to")
	ErrCorruptDB      = errors.New("ipam: corrupt database")
	ErrForeignDB      = errors.New("ipam: database belongs to another peer or range")
	ErrBadInit        = errors.New("ipam: bad --ipalloc-init")
	ErrNotInitialised = errors.New("ipam: the ring is not initialised yet")
)

// Peers is what the allocator needs to know about other peers; the daemon adapts the mesh
// router (and memberlist's failure detector) to it. Its methods are called with the
// allocator's lock held: they must be quick and must not call back into the Allocator.
type Peers interface {
	// IsReachable reports whether the mesh currently has a route to p.
	IsReachable(p mesh.PeerName) bool
	// NickName returns p's nickname, or "" if unknown.
	NickName(p mesh.PeerName) string
	// DeadSince returns when the cluster agreed that p is dead (false: it is not).
	DeadSince(p mesh.PeerName) (time.Time, bool)
}

// PeerCounter is implemented by a Peers view that knows how many peers the mesh has seen
// (ourselves included). Consensus then needs a majority of those, not only of the initial
// peers: a peer relaunched without arguments must not bootstrap a ring alone in a mesh
// whose other peers it already sees.
type PeerCounter interface {
	NumPeers() int
}

// Store persists the ring and the allocations. BoltStore is the real one; MemStore keeps
// them in memory (tests, and simulations of restarts).
type Store interface {
	// Load returns what was saved (a zero Snapshot for a new store).
	Load() (Snapshot, error)
	// Commit saves the change atomically and durably.
	Commit(Change) error
	Close() error
}

// Snapshot is a store's content.
type Snapshot struct {
	Ring   []byte
	Paxos  []byte
	Allocs map[Key][]netip.Prefix
}

// Change is one atomic update of a Store: Ring and Paxos replace the saved values when
// non-nil; each listed allocation is replaced (a nil or empty slice deletes it).
type Change struct {
	Ring   []byte
	Paxos  []byte
	Allocs map[Key][]netip.Prefix
}

// Key names an allocation: one container's interface.
type Key struct {
	ID    string
	Iface string
}

func (k Key) String() string { return k.ID + "/" + k.Iface }

func (k Key) valid() error {
	if k.ID == "" || len(k.ID) > 1024 || len(k.Iface) > 256 || strings.ContainsRune(k.ID, 0) || strings.ContainsRune(k.Iface, 0) {
		return fmt.Errorf("%w: container id %q / interface %q", ErrBadArgument, k.ID, k.Iface)
	}
	return nil
}

// Config configures an Allocator. Zero values get the defaults noted.
type Config struct {
	// Range is the allocation range (default 10.32.0.0/12). IPv4 only.
	Range netip.Prefix
	// DefaultSubnet is used when Allocate gets no subnet (default Range).
	DefaultSubnet netip.Prefix
	// Init is "consensus" (default), "consensus=N", "seed=NAME,NAME,..." or "observer".
	Init string
	// InitialPeerCount is the number of initial peers (this one included) when Init is
	// plain "consensus"; the daemon passes len(targets)+1. Default 1.
	InitialPeerCount int
	// ReclaimAfter, when positive, takes over the space of a peer that the cluster has
	// agreed is dead for that long. Off by default, as in Weave.
	ReclaimAfter time.Duration
	// DBPath is the bbolt file; Store overrides it; with neither, nothing persists.
	DBPath string
	Store  Store
	// MemberPath, when set, is a small file beside the database that records that this
	// peer has belonged to a ring and who owned space in it. It survives the loss of the
	// database: a peer that finds no ring in its database but a record naming other owners
	// adopts their ring from the mesh and never makes one of its own (see member.go).
	MemberPath string
	// InUse are addresses containers on this host hold (the daemon's attached endpoints).
	// Those the database does not know (it was lost) are recorded as allocations before
	// anything else can be handed out, and re-claimed from their owners once the ring is
	// known, so they are never given to another container.
	InUse map[Key][]netip.Prefix
	// DiscardIncompatibleDB moves a corrupt or foreign database aside (to DBPath plus
	// ".bad-<unix time>") and starts fresh instead of refusing to start.
	DiscardIncompatibleDB bool
	// Name, NickName and UID identify this peer (UID is per process start).
	Name     mesh.PeerName
	NickName string
	UID      uint64
	// Peers answers reachability questions; nil means every peer is reachable. When it
	// also implements PeerCounter, plain "consensus" counts the peers the mesh knows too.
	Peers Peers
	// Logger receives structured logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
	// TickInterval paces retries; 0 means DefaultTickInterval and a negative value
	// starts no ticker (tests call Tick themselves).
	TickInterval time.Duration
}

type initMode int

const (
	initConsensus initMode = iota
	initSeed
	initObserver
)

// parseInit parses --ipalloc-init.
func parseInit(s string, initialPeers int) (mode initMode, quorum int, seeds []mesh.PeerName, err error) {
	switch {
	case s == "" || s == "consensus":
		n := max(initialPeers, 1)
		return initConsensus, n/2 + 1, nil, nil
	case strings.HasPrefix(s, "consensus="):
		n, err := strconv.Atoi(strings.TrimPrefix(s, "consensus="))
		if err != nil || n < 1 || n > 10000 {
			return 0, 0, nil, fmt.Errorf("%w %q: consensus=N needs a positive count", ErrBadInit, s)
		}
		return initConsensus, n/2 + 1, nil, nil
	case strings.HasPrefix(s, "seed="):
		for _, f := range strings.Split(strings.TrimPrefix(s, "seed="), ",") {
			p, err := mesh.ParsePeerName(strings.TrimSpace(f))
			if err != nil {
				return 0, 0, nil, fmt.Errorf("%w %q: %w", ErrBadInit, s, err)
			}
			seeds = append(seeds, p)
		}
		slices.Sort(seeds)
		return initSeed, 0, slices.Compact(seeds), nil
	case s == "observer":
		return initObserver, 0, nil, nil
	}
	return 0, 0, nil, fmt.Errorf("%w %q: want consensus[=N], seed=NAME,... or observer", ErrBadInit, s)
}

// resolved is the validated configuration.
type resolved struct {
	Config
	rng, subnet addr.Range
	mode        initMode
	quorum      int
	// plainConsensus: "consensus" without a count, so the quorum may grow with the peers
	// known (PeerCounter).
	plainConsensus bool
	seeds          []mesh.PeerName
	tick           time.Duration
}

func (c Config) resolve() (resolved, error) {
	r := resolved{Config: c}
	if r.Name == mesh.UnknownPeerName {
		return r, fmt.Errorf("%w: peer name not set", ErrBadArgument)
	}
	if !r.Range.IsValid() {
		r.Range = DefaultRange
	}
	r.Range = r.Range.Masked()
	var err error
	if r.rng, err = addr.FromPrefix(r.Range); err != nil {
		return r, fmt.Errorf("ipalloc-range %s: %w", r.Range, err)
	}
	if !r.DefaultSubnet.IsValid() {
		r.DefaultSubnet = r.Range
	}
	r.DefaultSubnet = r.DefaultSubnet.Masked()
	if r.subnet, err = addr.FromPrefix(r.DefaultSubnet); err != nil {
		return r, fmt.Errorf("ipalloc-default-subnet %s: %w", r.DefaultSubnet, err)
	}
	if !r.rng.ContainsRange(r.subnet) {
		return r, fmt.Errorf("%w: default subnet %s not inside %s", ErrOutOfRange, r.DefaultSubnet, r.Range)
	}
	if r.mode, r.quorum, r.seeds, err = parseInit(r.Init, r.InitialPeerCount); err != nil {
		return r, err
	}
	r.plainConsensus = r.Init == "" || r.Init == "consensus"
	if r.Logger == nil {
		r.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if r.Now == nil {
		r.Now = time.Now
	}
	switch {
	case r.TickInterval == 0:
		r.tick = DefaultTickInterval
	case r.TickInterval > 0:
		r.tick = r.TickInterval
	default:
		r.tick = DefaultTickInterval
	}
	if r.Peers == nil {
		r.Peers = allReachable{}
	}
	return r, nil
}

type allReachable struct{}

func (allReachable) IsReachable(mesh.PeerName) bool            { return true }
func (allReachable) NickName(mesh.PeerName) string             { return "" }
func (allReachable) DeadSince(mesh.PeerName) (time.Time, bool) { return time.Time{}, false }
