package overlay

import (
	"maps"
	"sync"
	"sync/atomic"

	"github.com/weavemesh/weave/mesh"
)

// Switch picks the overlay per neighbour: a kernel path (fastdp) where it works, the
// userspace Forwarder (the sleeve) for everything else. The kernel never needs the router
// to send it frames (the bridge gives them to its port directly), so Forward and MaxFrame
// always go to the userspace overlay; the router asks KernelCarries to learn which of the
// frames it captured the kernel has already carried.
//
// The kernel side flips a neighbour with SetKernel. fastdp calls it from its OnChange,
// after it programmed the kernel when a pair goes to fastdp and before it removes the
// entries when the pair leaves, so frames may be lost during a flip but never duplicated.
type Switch struct {
	userspace Forwarder

	mu     sync.Mutex                            // serialises writers of kernel
	kernel atomic.Pointer[map[mesh.PeerName]int] // neighbour -> largest frame over the kernel
}

var (
	_ Forwarder     = (*Switch)(nil)
	_ KernelCarrier = (*Switch)(nil)
)

// NewSwitch returns a Switch that sends over userspace and knows no kernel path yet.
func NewSwitch(userspace Forwarder) *Switch {
	s := &Switch{userspace: userspace}
	s.kernel.Store(&map[mesh.PeerName]int{})
	return s
}

// SetKernel records that the kernel carries frames to hop, up to maxFrame bytes each;
// maxFrame 0: it no longer does.
func (s *Switch) SetKernel(hop mesh.PeerName, maxFrame int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := *s.kernel.Load()
	if cur, ok := old[hop]; ok && cur == maxFrame || !ok && maxFrame <= 0 {
		return
	}
	m := maps.Clone(old)
	if maxFrame > 0 {
		m[hop] = maxFrame
	} else {
		delete(m, hop)
	}
	s.kernel.Store(&m)
}

// KernelCarries implements KernelCarrier.
func (s *Switch) KernelCarries(hop mesh.PeerName) bool {
	_, ok := (*s.kernel.Load())[hop]
	return ok
}

// KernelMaxFrame is the largest frame the kernel carries to hop, 0 when it does not.
func (s *Switch) KernelMaxFrame(hop mesh.PeerName) int { return (*s.kernel.Load())[hop] }

// Forward sends frames over the userspace overlay (implements Forwarder).
func (s *Switch) Forward(hop mesh.PeerName, frames []Frame) { s.userspace.Forward(hop, frames) }

// MaxFrame is the userspace overlay's: the router sizes only what it sends itself
// (implements Forwarder).
func (s *Switch) MaxFrame(hop mesh.PeerName) int { return s.userspace.MaxFrame(hop) }

// MaxGSO is the userspace overlay's (GSOForwarder), 0 if it carries no super-frames.
func (s *Switch) MaxGSO(hop mesh.PeerName) int {
	if g, ok := s.userspace.(GSOForwarder); ok {
		return g.MaxGSO(hop)
	}
	return 0
}
