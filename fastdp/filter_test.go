package fastdp

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/weavemesh/weave/mesh"
)

// TestFilterFollowsHeartbeatPeers: the underlay filter admits exactly the addresses of the
// pairs that heartbeat over the kernel path (probing or active), never a pair that stays on
// sleeve (encryption, no fastdp, mismatch), shares an address between two peers (NAT) until
// the last of them goes, and a failing filter keeps the peer off the kernel path.
func TestFilterFollowsHeartbeatPeers(t *testing.T) {
	fl := NewFakeFilter()
	k := NewFakeNet().Kernel(netip.MustParseAddr("10.201.0.1"), 1450)
	f, err := New(Config{Name: 1, Kernel: k, Filter: fl, VNI: 7, Timing: fastTiming})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	nat := netip.MustParseAddr("10.201.0.9")
	encrypted := netip.MustParseAddr("10.201.0.3")
	add := func(name mesh.PeerName, conn uint64, addr netip.Addr, p Peer) {
		t.Helper()
		p.Name, p.ConnID, p.Addr = name, conn, addr
		if p.Feature == "" {
			p.Feature = f.feature
		}
		if err := f.AddPeer(p); err != nil {
			t.Fatal(err)
		}
	}
	add(2, 1, nat, Peer{})
	add(3, 1, nat, Peer{}) // a second peer behind the same NAT
	add(4, 1, encrypted, Peer{NeedsEncryption: true})
	add(5, 1, netip.MustParseAddr("10.201.0.5"), Peer{Feature: "vxlan/1/1"})
	if !fl.Admits(nat) || fl.Len() != 1 {
		t.Fatalf("filter admits %d addresses (nat %v), want only the heartbeat peers' %s", fl.Len(), fl.Admits(nat), nat)
	}
	f.RemovePeer(2, 1)
	if !fl.Admits(nat) {
		t.Fatal("the NAT address was closed while peer 3 behind it still runs fastdp")
	}
	add(3, 2, nat, Peer{}) // a newer connection of the same peer
	if !fl.Admits(nat) {
		t.Fatal("replacing peer 3's connection closed the filter")
	}
	f.RemovePeer(3, 2)
	if fl.Len() != 0 {
		t.Fatalf("filter admits %d addresses after every fastdp peer left", fl.Len())
	}

	fl.Fail = errors.New("netlink says no")
	if err := f.AddPeer(Peer{Name: 6, ConnID: 1, Addr: nat, Feature: f.feature}); err == nil {
		t.Fatal("AddPeer succeeded although the filter could not admit the peer")
	}
	k.mu.Lock()
	beating := k.beats[nat]
	k.mu.Unlock()
	if _, ok := f.Status(6); ok || beating {
		t.Fatal("a peer the filter refused still heartbeats over the kernel path")
	}
	if got := f.Stats().KernelErrors; got == 0 {
		t.Fatal("the filter failure was not counted")
	}
	fl.Fail = nil
	add(6, 1, nat, Peer{})
	if !fl.Admits(nat) {
		t.Fatal("the filter did not open once it worked again")
	}
}
