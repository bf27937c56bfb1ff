package paxos

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/weavemesh/weave/mesh"
)

// Random gossip among n electors, some proposing concurrently and repeatedly, messages lost
// and reordered: everyone who decides decides the same value, and all decide eventually.
func TestAgreementUnderRandomGossip(t *testing.T) {
	for seed := uint64(1); seed <= 200; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rnd := rand.New(rand.NewPCG(seed, 3))
			n := 1 + rnd.IntN(7)
			nodes := make([]*Node, n)
			for i := range nodes {
				nodes[i] = NewNode(NodeID{Name: mesh.PeerName(i + 1), UID: uint64(100 + i)}, n/2+1)
			}
			var decided []mesh.PeerName
			check := func() bool {
				all := true
				for _, nd := range nodes {
					v, ok := nd.Consensus()
					if !ok {
						all = false
						continue
					}
					if decided == nil {
						decided = v
					} else if !slices.Equal(decided, v) {
						t.Fatalf("two values decided: %v and %v", decided, v)
					}
				}
				return all
			}
			// In-flight messages: snapshots of some node's state, delivered late or never.
			type msg struct {
				to int
				s  State
			}
			var inflight []msg
			for step := 0; step < 3000; step++ {
				i := rnd.IntN(n)
				switch rnd.IntN(10) {
				case 0:
					if _, ok := nodes[i].Consensus(); !ok {
						nodes[i].Propose()
					}
				case 1, 2, 3, 4:
					inflight = append(inflight, msg{rnd.IntN(n), nodes[i].State()})
				default:
					if len(inflight) > 0 {
						k := rnd.IntN(len(inflight))
						m := inflight[k]
						inflight = slices.Delete(inflight, k, k+1)
						if rnd.IntN(5) == 0 {
							continue // lost
						}
						nodes[m.to].Update(m.s)
					}
				}
				nodes[i].Think()
				if check() && step > 100 {
					break
				}
			}
			// Heal: reliable gossip with re-proposals until everyone decides.
			for round := 0; !check(); round++ {
				if round > 200 {
					t.Fatal("no consensus after healing")
				}
				for _, a := range nodes {
					for _, b := range nodes {
						b.Update(a.State())
						b.Think()
					}
				}
				if round%10 == 9 {
					for _, a := range nodes {
						if _, ok := a.Consensus(); !ok {
							a.Propose()
							break
						}
					}
				}
			}
			for _, nd := range nodes {
				if v, _ := nd.Consensus(); len(v) == 0 {
					t.Fatal("empty value decided")
				}
			}
		})
	}
}

func TestNoDecisionWithoutQuorum(t *testing.T) {
	a := NewNode(NodeID{Name: 1, UID: 1}, 2)
	a.Propose()
	for range 5 {
		a.Think()
	}
	if _, ok := a.Consensus(); ok {
		t.Fatal("one node of a quorum of two decided alone")
	}
	b := NewNode(NodeID{Name: 2, UID: 2}, 2)
	for range 4 {
		b.Update(a.State())
		b.Think()
		a.Update(b.State())
		a.Think()
	}
	v, ok := a.Consensus()
	if !ok || !slices.Equal(v, []mesh.PeerName{1, 2}) {
		t.Fatalf("consensus %v %v", v, ok)
	}
}

func TestCodecRoundTrip(t *testing.T) {
	a := NewNode(NodeID{Name: 1, UID: 1}, 1)
	a.Propose()
	a.Think()
	s := a.State()
	s[NodeID{Name: 7, UID: 9}] = Claims{}
	d, err := Decode(s.Encode())
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(d) != fmt.Sprint(s) {
		t.Fatalf("round trip:\n%v\n%v", s, d)
	}
	enc := s.Encode()
	for cut := range len(enc) {
		if _, err := Decode(enc[:cut]); err == nil {
			t.Fatalf("truncated at %d accepted", cut)
		}
	}
}

func FuzzDecode(f *testing.F) {
	a := NewNode(NodeID{Name: 1, UID: 1}, 1)
	a.Propose()
	a.Think()
	f.Add(a.State().Encode())
	f.Add(State{}.Encode())
	f.Add([]byte("P\x01\xff\xff"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := Decode(b)
		if err != nil {
			return
		}
		n := NewNode(NodeID{Name: 9, UID: 9}, 2)
		n.Update(s)
		n.Think()
		n.Consensus()
		if _, err := Decode(s.Encode()); err != nil {
			t.Fatalf("re-encoded state rejected: %v", err)
		}
	})
}

// RaiseQuorum only ever raises: a node told the mesh has three peers no longer decides on
// its own vote, and a lower count later does not bring that back.
func TestRaiseQuorum(t *testing.T) {
	a := NewNode(NodeID{Name: 1, UID: 1}, 1)
	if !a.RaiseQuorum(2) || a.RaiseQuorum(1) || a.Quorum() != 2 {
		t.Fatalf("quorum %d", a.Quorum())
	}
	a.Propose()
	a.Think()
	if v, ok := a.Consensus(); ok {
		t.Fatalf("decided %v alone with a quorum of 2", v)
	}
	b := NewNode(NodeID{Name: 2, UID: 2}, 2)
	for range 4 {
		b.Update(a.State())
		b.Think()
		a.Update(b.State())
		a.Think()
	}
	if _, ok := a.Consensus(); !ok {
		t.Fatal("no decision with a quorum of two votes")
	}
}
