package fastdp

import (
	"errors"
	"net/netip"
	"sync"
)

// FakeNet is an in-memory underlay for tests without root: each FakeKernel stands for one
// host's VXLAN device, and heartbeat frames written into one reach the FakeKernels of its
// heartbeat remotes, unless the pair is blocked or the frame exceeds the pair's path MTU.
// It carries heartbeats only; data frames are the real kernel's business.
type FakeNet struct {
	mu      sync.Mutex
	ends    map[netip.Addr]*FakeKernel
	blocked map[[2]netip.Addr]bool // [from, to]
	pathMTU map[[2]netip.Addr]int  // largest underlay packet from -> to; 0: unlimited
}

// NewFakeNet returns an empty fake underlay.
func NewFakeNet() *FakeNet {
	return &FakeNet{ends: map[netip.Addr]*FakeKernel{}, blocked: map[[2]netip.Addr]bool{},
		pathMTU: map[[2]netip.Addr]int{}}
}

// Kernel returns a fake VXLAN device at underlay address addr with the given MTU.
func (n *FakeNet) Kernel(addr netip.Addr, mtu int) *FakeKernel {
	k := &FakeKernel{net: n, addr: addr, mtu: mtu, mac: [6]byte{0x02, 0xfa, 0x4e, 0, 0, byte(len(n.ends) + 1)},
		beats: map[netip.Addr]bool{}, flood: map[netip.Addr]bool{}, macs: map[[6]byte]netip.Addr{},
		in: make(chan []byte, 64), done: make(chan struct{})}
	n.mu.Lock()
	n.ends[addr] = k
	n.mu.Unlock()
	return k
}

// Block drops (or, with false, passes again) everything from -> to.
func (n *FakeNet) Block(from, to netip.Addr, blocked bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.blocked[[2]netip.Addr{from, to}] = blocked
}

// SetPathMTU limits the underlay packets from -> to to mtu bytes (0: no limit).
func (n *FakeNet) SetPathMTU(from, to netip.Addr, mtu int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.pathMTU[[2]netip.Addr{from, to}] = mtu
}

func (n *FakeNet) deliver(from netip.Addr, to []netip.Addr, frame []byte) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, a := range to {
		k := n.ends[a]
		key := [2]netip.Addr{from, a}
		if k == nil || n.blocked[key] {
			continue
		}
		if m := n.pathMTU[key]; m > 0 && len(frame)-ethHeaderLen+OverheadIPv4 > m {
			continue
		}
		select {
		case k.in <- append([]byte(nil), frame...):
		default: // a full queue drops, as a real socket buffer would
		}
	}
}

// FakeKernel is one fake VXLAN device; it records the FDB that fastdp programs.
type FakeKernel struct {
	net  *FakeNet
	addr netip.Addr
	mtu  int
	mac  [6]byte

	mu    sync.Mutex
	beats map[netip.Addr]bool
	flood map[netip.Addr]bool
	macs  map[[6]byte]netip.Addr
	stats LinkStats

	in        chan []byte
	done      chan struct{}
	closeOnce sync.Once
}

var _ StatsKernel = (*FakeKernel)(nil)

func (k *FakeKernel) MTU() int              { return k.mtu }
func (k *FakeKernel) HardwareAddr() [6]byte { return k.mac }

func (k *FakeKernel) SetHeartbeatRemote(addr netip.Addr, on bool) error {
	return k.set(k.beats, addr, on)
}

func (k *FakeKernel) SetFloodRemote(addr netip.Addr, on bool) error { return k.set(k.flood, addr, on) }

func (k *FakeKernel) set(m map[netip.Addr]bool, addr netip.Addr, on bool) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if on {
		m[addr] = true
	} else {
		delete(m, addr)
	}
	return nil
}

func (k *FakeKernel) SetMAC(mac [6]byte, addr netip.Addr) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.macs[mac] = addr
	return nil
}

func (k *FakeKernel) DelMAC(mac [6]byte, addr netip.Addr) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.macs[mac] == addr {
		delete(k.macs, mac)
	}
	return nil
}

func (k *FakeKernel) FlushLearned() error { return nil }

// Flooding reports whether broadcast frames are replicated to addr.
func (k *FakeKernel) Flooding(addr netip.Addr) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.flood[addr]
}

// MAC returns the endpoint mac points at, if it has an entry (the invalid Addr: a drop
// entry).
func (k *FakeKernel) MAC(mac [6]byte) (netip.Addr, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	a, ok := k.macs[mac]
	return a, ok
}

// Inject delivers a raw frame to this device's heartbeat socket, as if from the network.
func (k *FakeKernel) Inject(frame []byte) {
	select {
	case k.in <- append([]byte(nil), frame...):
	case <-k.done:
	}
}

func (k *FakeKernel) WriteFrame(frame []byte) error {
	select {
	case <-k.done:
		return errors.New("fake kernel closed")
	default:
	}
	if len(frame) > k.mtu+ethHeaderLen {
		return errors.New("frame larger than the device MTU")
	}
	k.mu.Lock()
	k.stats.TxFrames++
	k.stats.TxBytes += uint64(len(frame))
	to := make([]netip.Addr, 0, len(k.beats))
	if [6]byte(frame[0:6]) == heartbeatMAC {
		for a := range k.beats {
			to = append(to, a)
		}
	}
	k.mu.Unlock()
	k.net.deliver(k.addr, to, frame)
	return nil
}

func (k *FakeKernel) ReadFrame(buf []byte) (int, error) {
	select {
	case f := <-k.in:
		k.mu.Lock()
		k.stats.RxFrames++
		k.stats.RxBytes += uint64(len(f))
		k.mu.Unlock()
		return copy(buf, f), nil
	case <-k.done:
		return 0, errors.New("fake kernel closed")
	}
}

// LinkStats counts the heartbeat frames written and read, and whatever Carry added; after
// Close it fails, as the real device's does.
func (k *FakeKernel) LinkStats() (LinkStats, error) {
	select {
	case <-k.done:
		return LinkStats{}, errors.New("fake kernel closed")
	default:
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.stats, nil
}

// Carry adds st to the device's counters, as if the kernel had carried data frames.
func (k *FakeKernel) Carry(st LinkStats) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.stats.RxFrames += st.RxFrames
	k.stats.RxBytes += st.RxBytes
	k.stats.RxDropped += st.RxDropped
	k.stats.TxFrames += st.TxFrames
	k.stats.TxBytes += st.TxBytes
	k.stats.TxDropped += st.TxDropped
}

func (k *FakeKernel) Close() error {
	k.closeOnce.Do(func() { close(k.done) })
	return nil
}

// FakeFilter is an in-memory Filter: it records which addresses are admitted and counts
// every call, so tests can check that the filter follows the peer set exactly.
type FakeFilter struct {
	mu      sync.Mutex
	allowed map[netip.Addr]bool
	calls   int
	// Fail, when set, is returned by Allow (and nothing changes).
	Fail error
}

// NewFakeFilter returns a FakeFilter that admits nobody.
func NewFakeFilter() *FakeFilter { return &FakeFilter{allowed: map[netip.Addr]bool{}} }

// Allow implements Filter. Opening an open address, or closing a closed one, is an error:
// FastDP must tell the filter each change exactly once.
func (f *FakeFilter) Allow(addr netip.Addr, on bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.Fail != nil {
		return f.Fail
	}
	if f.allowed[addr] == on {
		return errors.New("fake filter: " + addr.String() + " already in that state")
	}
	if on {
		f.allowed[addr] = true
	} else {
		delete(f.allowed, addr)
	}
	return nil
}

// Refused reports no dropped datagrams: nothing reaches a fake port.
func (f *FakeFilter) Refused() (uint64, error) { return 0, nil }

// Close does nothing; the admitted set stays readable.
func (f *FakeFilter) Close() error { return nil }

// Admits reports whether datagrams from addr would pass.
func (f *FakeFilter) Admits(addr netip.Addr) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.allowed[addr]
}

// Len is how many addresses are admitted.
func (f *FakeFilter) Len() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.allowed)
}
