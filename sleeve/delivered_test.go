package sleeve_test

import (
	"testing"
	"time"

	"github.com/weavemesh/weave/overlay"
)

// TestDeliveredFrameIsOnlyPassedOn: 0 - 1 - 2 in a line. A broadcast of 0 that 0's kernel
// path already delivered to 1 crosses the sleeve to 1 marked Delivered: 1 does not inject
// it again but passes it on to 2, which does.
func TestDeliveredFrameIsOnlyPassedOn(t *testing.T) {
	for _, pw := range []string{"", "pw"} {
		l := newLab(t, labOpts{n: 3, links: [][2]int{{0, 1}, {2, 1}}, password: pw})
		l.under.Block(addrPort(0), addrPort(2))
		l.under.Block(addrPort(2), addrPort(0))
		l.waitRoutes()
		n0, n1, n2 := l.nodes[0], l.nodes[1], l.nodes[2]
		n0.s.Forward(n1.m.Name(), []overlay.Frame{{Src: n0.m.Name(), Dst: n1.m.Name(), Delivered: true,
			Data: ethFrame(bcast, mac(0, 1), "kernel-had-it", 80)}})
		expectFrame(t, n2, "kernel-had-it", 5*time.Second)
		// A normal broadcast of 0 as a fence: 1 injects that one, and only that one.
		n0.tap.Inject(ethFrame(bcast, mac(0, 1), "fence", 60))
		if c := countFrames(t, n1, "kernel-had-it", "fence", 5*time.Second); c != 0 {
			t.Errorf("password %q: node 1 injected a frame its kernel path had delivered (%d times)", pw, c)
		}
		if owner, ok := n1.r.Owner(macSlice(0, 1)); !ok || owner != n0.m.Name() {
			t.Errorf("password %q: node 1 did not learn 0's MAC from the delivered frame: %v %v", pw, owner, ok)
		}
	}
}
