package netdev_test

import (
	"context"
	"testing"
	"time"

	"github.com/weavemesh/weave/internal/netdev"
	"github.com/weavemesh/weave/internal/netlab"
	"github.com/weavemesh/weave/internal/testutil"
)

// TestUnderlayMTUIgnoresOurDevices: on a host without a default route (lab hosts have none), the underlay MTU is
// the underlay link's, not that of a smaller bridge, bridge port, address-less veth or VXLAN
// device (ours, left from an earlier run), which would shrink the MTU at every relaunch.
func TestUnderlayMTUIgnoresOurDevices(t *testing.T) {
	testutil.RequireRoot(t)
	lab := netlab.New(t, netlab.Options{Hosts: 1})
	h := lab.Hosts[0]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, cmd := range [][]string{
		{"ip", "link", "add", "wbr", "mtu", "1300", "type", "bridge"},
		{"ip", "link", "add", "wva", "mtu", "1300", "type", "veth", "peer", "name", "wvb", "mtu", "1300"},
		{"ip", "link", "set", "wva", "master", "wbr", "up"},
		{"ip", "link", "set", "wvb", "up"},
		{"ip", "link", "set", "wbr", "up"},
		{"ip", "addr", "add", "10.77.0.1/24", "dev", "wbr"},
		{"ip", "link", "add", "wvx", "mtu", "1200", "type", "vxlan", "id", "42", "dstport", "4789", "dev", netlab.UnderlayLink},
		{"ip", "link", "set", "wvx", "up"},
	} {
		if out, err := h.Run(ctx, cmd...); err != nil {
			t.Fatalf("%v: %v\n%s", cmd, err, out)
		}
	}
	var mtu int
	err := h.Do(func() (err error) {
		mtu, err = netdev.Netlink{}.UnderlayMTU()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if mtu != 1500 {
		t.Errorf("UnderlayMTU = %d, want 1500 (the underlay link's)", mtu)
	}
}
