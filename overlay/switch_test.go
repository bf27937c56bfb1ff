package overlay

import (
	"testing"

	"github.com/weavemesh/weave/mesh"
)

type recFwd struct {
	hops []uint64
	max  int
}

func (r *recFwd) Forward(hop mesh.PeerName, frames []Frame) { r.hops = append(r.hops, uint64(hop)) }
func (r *recFwd) MaxFrame(mesh.PeerName) int                { return r.max }

func TestSwitchFlipsPerHop(t *testing.T) {
	u := &recFwd{max: 1400}
	s := NewSwitch(u)
	if s.KernelCarries(2) || s.KernelMaxFrame(2) != 0 {
		t.Fatal("a new switch claims a kernel path")
	}
	s.SetKernel(2, 1464)
	if !s.KernelCarries(2) || s.KernelMaxFrame(2) != 1464 || s.KernelCarries(3) {
		t.Fatalf("after SetKernel(2): carries(2)=%v max=%d carries(3)=%v", s.KernelCarries(2), s.KernelMaxFrame(2), s.KernelCarries(3))
	}
	// Forward and MaxFrame always go to userspace: the kernel never needs the router.
	s.Forward(2, []Frame{{Src: 1, Dst: 2}})
	if len(u.hops) != 1 || u.hops[0] != 2 || s.MaxFrame(2) != 1400 {
		t.Fatalf("userspace got %v, MaxFrame %d", u.hops, s.MaxFrame(2))
	}
	s.SetKernel(2, 0)
	if s.KernelCarries(2) {
		t.Fatal("hop still on the kernel after SetKernel(2, 0)")
	}
	s.SetKernel(3, 0) // unknown hop off: nothing to do
	if s.KernelCarries(3) {
		t.Fatal("hop 3 on the kernel")
	}
}
