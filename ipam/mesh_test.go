package ipam_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/weavemesh/weave/internal/testutil"
	"github.com/weavemesh/weave/ipam"
	"github.com/weavemesh/weave/mesh"
)

// meshPeers adapts a mesh router to ipam.Peers, as the daemon does.
type meshPeers struct{ r *mesh.Router }

func (m meshPeers) IsReachable(p mesh.PeerName) bool {
	_, ok := m.r.UnicastNextHop(p)
	return ok
}
func (m meshPeers) NickName(mesh.PeerName) string             { return "" }
func (m meshPeers) DeadSince(mesh.PeerName) (time.Time, bool) { return time.Time{}, false }

// Three allocators over three real mesh routers (in-memory transport): they agree on the
// split by consensus, hand out distinct addresses concurrently, and lend space by unicast.
func TestOverRealMesh(t *testing.T) {
	mn := mesh.NewMemNetwork()
	var routers []*mesh.Router
	var allocs []*ipam.Allocator
	for i := range 3 {
		host := fmt.Sprintf("10.0.0.%d", i+1)
		var peers []string
		for j := range i {
			peers = append(peers, fmt.Sprintf("10.0.0.%d:6783", j+1))
		}
		r, err := mesh.New(mesh.Config{
			Name: mesh.PeerName(0x0a0000000001 + i), NickName: host, ListenAddr: host + ":6783",
			Transport: mn.Transport(host), NoMemberlist: true, Peers: peers,
			GossipInterval: 100 * time.Millisecond,
		})
		if err != nil {
			t.Fatal(err)
		}
		a, err := ipam.New(ipam.Config{
			Range: netip.MustParsePrefix("10.32.0.0/22"), Init: "consensus=3",
			Name: r.Name(), UID: uint64(i + 1), Peers: meshPeers{r}, TickInterval: 50 * time.Millisecond,
		})
		if err != nil {
			t.Fatal(err)
		}
		g, err := r.NewGossip(ipam.ChannelName, a)
		if err != nil {
			t.Fatal(err)
		}
		a.SetGossip(g)
		if err := r.Start(); err != nil {
			t.Fatal(err)
		}
		routers = append(routers, r)
		allocs = append(allocs, a)
	}
	t.Cleanup(func() {
		for i := range routers {
			allocs[i].Close()
			routers[i].Close()
		}
	})
	testutil.Eventually(t, 10*time.Second, "full mesh", func() error {
		for _, r := range routers {
			for _, o := range routers {
				if _, ok := r.UnicastNextHop(o.Name()); !ok && o != r {
					return fmt.Errorf("%v has no route to %v", r.Name(), o.Name())
				}
			}
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var mu sync.Mutex
	seen := map[netip.Addr]string{}
	var wg sync.WaitGroup
	errc := make(chan error, 60)
	for i, a := range allocs {
		for j := range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				id := fmt.Sprintf("p%d-c%d", i, j)
				p, err := a.Allocate(ctx, id, "ethwe", netip.Prefix{})
				if err != nil {
					errc <- err
					return
				}
				mu.Lock()
				defer mu.Unlock()
				if prev, dup := seen[p.Addr()]; dup {
					errc <- fmt.Errorf("%v handed to %s and %s", p, prev, id)
				}
				seen[p.Addr()] = id
			}()
		}
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	// Space in a subnet another peer owns is lent on request.
	var sub netip.Prefix
	for _, e := range allocs[0].Status().Entries {
		if e.Peer != routers[0].Name().String() {
			// The top of the piece: its owner allocates from the bottom.
			b := netip.MustParseAddr(e.Token).As4()
			top := binary.BigEndian.Uint32(b[:]) + uint32(e.Size) - 16
			binary.BigEndian.PutUint32(b[:], top)
			sub = netip.PrefixFrom(netip.AddrFrom4(b), 28)
			break
		}
	}
	p, err := allocs[0].Allocate(ctx, "borrower", "ethwe", sub)
	if err != nil || !sub.Contains(p.Addr()) {
		t.Fatalf("allocation in %v on a peer that owned none of it: %v %v", sub, p, err)
	}
	testutil.Eventually(t, 10*time.Second, "rings agree", func() error {
		shape := func(r ipam.Report) (out []string) {
			for _, e := range r.Entries {
				out = append(out, e.Token+"/"+e.Peer)
			}
			return out
		}
		s0 := shape(allocs[0].Status())
		for _, a := range allocs[1:] {
			if !slices.Equal(shape(a.Status()), s0) {
				return errors.New("rings differ")
			}
		}
		return nil
	})
}
