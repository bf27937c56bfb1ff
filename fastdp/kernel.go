package fastdp

import (
	"errors"
	"net/netip"
)

// ErrNoKernelSupport: this kernel (or OS) cannot create the VXLAN device. The daemon then
// runs sleeve only and reports ReasonNoKernel.
var ErrNoKernelSupport = errors.New("fastdp: no kernel VXLAN support")

// Kernel is the OS boundary of fastdp: the VXLAN device on the bridge, its forwarding
// database, and a socket that sends and receives heartbeat frames through the device.
// The Linux implementation uses netlink and an AF_PACKET socket; FakeNet provides an
// in-memory one for tests without root. Methods may be called from several goroutines.
type Kernel interface {
	// MTU is the VXLAN device's MTU: the largest IP packet a container may send through it.
	MTU() int
	// HardwareAddr is the device's MAC, the source of our heartbeats.
	HardwareAddr() [6]byte
	// SetHeartbeatRemote adds or removes addr from the endpoints every heartbeat frame is
	// replicated to.
	SetHeartbeatRemote(addr netip.Addr, on bool) error
	// SetFloodRemote adds or removes addr from the endpoints that broadcast and unknown
	// unicast frames are replicated to (the all-zero MAC entries).
	SetFloodRemote(addr netip.Addr, on bool) error
	// SetMAC points mac at the endpoint addr, or with the invalid Addr at nowhere (frames
	// for it are dropped). DelMAC removes the entry of mac with that destination.
	SetMAC(mac [6]byte, addr netip.Addr) error
	DelMAC(mac [6]byte, addr netip.Addr) error
	// FlushLearned forgets what the bridge learned dynamically, so that after a peer
	// changes path the bridge floods to both the router and the VXLAN port until it
	// relearns where each MAC is, instead of sending to a stale port.
	FlushLearned() error
	// WriteFrame sends an Ethernet frame into the VXLAN device.
	WriteFrame(frame []byte) error
	// ReadFrame blocks until a heartbeat frame arrives on the device and copies it into
	// buf; after Close it returns an error.
	ReadFrame(buf []byte) (int, error)
	// Close stops I/O. The device and its entries stay (Cleanup removes the device).
	Close() error
}

// LinkStats are the counters of the device that carries fastdp's frames, as the kernel keeps
// them: every frame it encapsulated or decapsulated, containers' data and our heartbeats
// alike. Dropped frames include the device's errors.
type LinkStats struct {
	RxFrames, RxBytes, RxDropped uint64
	TxFrames, TxBytes, TxDropped uint64
}

// StatsKernel is a Kernel that can read its device's counters. It is separate from Kernel so
// that an implementation without them still is a Kernel; fastdp then counts what passes
// through itself (heartbeats) only.
type StatsKernel interface {
	Kernel
	// LinkStats returns the device's counters since it was created.
	LinkStats() (LinkStats, error)
}

// sub returns s - base field by field, never wrapping below zero.
func (s LinkStats) sub(base LinkStats) LinkStats {
	d := func(cur, old uint64) uint64 {
		if cur < old {
			return cur
		}
		return cur - old
	}
	return LinkStats{
		RxFrames: d(s.RxFrames, base.RxFrames), RxBytes: d(s.RxBytes, base.RxBytes), RxDropped: d(s.RxDropped, base.RxDropped),
		TxFrames: d(s.TxFrames, base.TxFrames), TxBytes: d(s.TxBytes, base.TxBytes), TxDropped: d(s.TxDropped, base.TxDropped),
	}
}

// Filter is the underlay firewall in front of the VXLAN port (package guard): datagrams
// reach the kernel path only from the addresses allowed here. FastDP allows a peer's
// address while it heartbeats with the peer (probing or active) and withdraws it when
// the pair ends, so a host that is not a fastdp peer can never inject frames. Addresses
// are reference-counted by FastDP: Allow sees each change once.
type Filter interface {
	Allow(addr netip.Addr, on bool) error
}
