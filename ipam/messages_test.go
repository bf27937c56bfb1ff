package ipam

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/weavemesh/weave/ipam/addr"
	"github.com/weavemesh/weave/ipam/paxos"
	"github.com/weavemesh/weave/ipam/ring"
	"github.com/weavemesh/weave/mesh"
)

func sampleMessages() [][]byte {
	r := ring.New(addr.Range{Start: 0x0a200000, End: 0x0a200400})
	_ = r.Seed([]mesh.PeerName{1, 2})
	n := paxos.NewNode(paxos.NodeID{Name: 1, UID: 1}, 1)
	n.Propose()
	n.Think()
	sub := addr.Range{Start: 0x0a200000, End: 0x0a200100}
	return [][]byte{
		encodeRing(r),
		encodeHello(r),
		encodePaxos(n.State()),
		encodeSpace(msgSpaceRequest, sub, nil),
		encodeSpace(msgSpaceDenied, sub, r),
		encodeClaim(0x0a200005),
		encodeClaimDenied(0x0a200005, claimInUse, r),
	}
}

func TestMessagesRoundTrip(t *testing.T) {
	for _, b := range sampleMessages() {
		m, err := decodeMessage(b)
		if err != nil {
			t.Fatalf("type %d: %v", b[0], err)
		}
		if m.kind != b[0] {
			t.Fatalf("kind %d for %d", m.kind, b[0])
		}
		for cut := range len(b) {
			if _, err := decodeMessage(b[:cut]); err == nil {
				t.Fatalf("type %d truncated at %d accepted", b[0], cut)
			}
		}
	}
	if _, err := decodeMessage([]byte{99}); !errors.Is(err, ErrBadMessage) {
		t.Fatalf("unknown type: %v", err)
	}
}

// Hostile bytes on every entry point of the gossiper: refused with an error or handled,
// never a panic, and the allocator keeps working and keeps its invariants.
func FuzzGossiperInput(f *testing.F) {
	for _, b := range sampleMessages() {
		f.Add(b, uint8(0))
		f.Add(b, uint8(1))
		f.Add(b, uint8(2))
	}
	f.Add([]byte{}, uint8(0))
	f.Add([]byte{msgClaimDenied, 0, 0, 0, 0, 9}, uint8(0))
	f.Fuzz(func(t *testing.T, b []byte, how uint8) {
		n := newFakeNet(1)
		a := n.start(t, n.config(3, "seed="+mesh.PeerName(1).String()+","+mesh.PeerName(3).String(), nil))
		defer a.Close()
		if _, err := decodeMessage(b); err != nil {
			before := a.Counts().BadMessages
			_ = a.OnGossipUnicast(1, b)
			if a.Counts().BadMessages != before+1 {
				t.Fatal("bad message not counted")
			}
		}
		switch how % 3 {
		case 0:
			_ = a.OnGossipUnicast(1, b)
		case 1:
			_, _ = a.OnGossipBroadcast(1, b)
		case 2:
			_, _ = a.OnGossip(b)
		}
		a.mu.Lock()
		err := a.ring.Check()
		a.mu.Unlock()
		if err != nil {
			t.Fatalf("ring broken by input: %v", err)
		}
		// Still serving (an expired context: no waiting, just no panic and no corruption).
		_ = a.Claim(ctxT(t, 0), "c", "ethwe", netip.MustParsePrefix("10.32.3.3/22"))
		_, _ = a.Allocate(ctxT(t, 0), "d", "ethwe", netip.Prefix{})
	})
}

// Records read back from the database go through decoders too: corrupt bytes are errors.
func FuzzStoredRecords(f *testing.F) {
	n := paxos.NewNode(paxos.NodeID{Name: 1, UID: 1}, 1)
	n.Propose()
	n.Think()
	f.Add(encodeElector(n))
	f.Add(encodePrefixes([]netip.Prefix{netip.MustParsePrefix("10.32.0.1/12"), netip.MustParsePrefix("10.40.0.1/24")}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		if el, err := decodeElector(b, 2); err == nil {
			if _, err := decodeElector(encodeElector(el), 2); err != nil {
				t.Fatalf("re-encoded elector rejected: %v", err)
			}
		}
		if ps, err := decodePrefixes(b); err == nil {
			again, err := decodePrefixes(encodePrefixes(ps))
			if err != nil || len(again) != len(ps) {
				t.Fatalf("re-encoded prefixes: %v %v", again, err)
			}
		}
	})
}
