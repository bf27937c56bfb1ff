package sleeve_test

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/weavemesh/weave/internal/testutil"
)

// TestReplayedAndForgedDatagramsDropped: an attacker on the underlay replays a captured data
// datagram and sends altered ones; all are dropped and counted, nothing reaches the bridge,
// and the captured datagram never shows the frame's plaintext.
func TestReplayedAndForgedDatagramsDropped(t *testing.T) {
	l := newLab(t, labOpts{n: 2, links: [][2]int{{1, 0}}, password: "pw", capture: true})
	l.waitRoutes()
	a, b := l.nodes[0], l.nodes[1]
	const marker = "SECRET-PAYLOAD-MARKER"
	a.tap.Inject(ethFrame(bcast, mac(0, 1), marker, 400))
	expectFrame(t, b, marker, 5*time.Second)
	var captured []byte
	for captured == nil {
		select {
		case d := <-a.bind.sent:
			if bytes.Contains(d, []byte(marker)) {
				t.Fatal("the marker crossed the underlay in plaintext")
			}
			if len(d) > 400 {
				captured = d
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no data datagram captured")
		}
	}
	attacker, err := l.under.NewBind(netip.MustParseAddrPort("10.0.0.99:6783"))
	if err != nil {
		t.Fatal(err)
	}
	defer attacker.Close()
	before := b.s.Stats()
	send := func(d []byte) {
		if err := attacker.WriteBatch([][]byte{d}, addrPort(1)); err != nil {
			t.Fatal(err)
		}
	}
	send(captured) // replay
	forged := bytes.Clone(captured)
	forged[len(forged)-20] ^= 1 // altered ciphertext under an unused sequence number
	forged[13] += 50
	send(forged)
	forged = bytes.Clone(captured)
	forged[13] += 100 // a fresh sequence number does not make it authentic
	send(forged)
	send(forged[:20]) // truncated
	testutil.Eventually(t, 5*time.Second, "drops counted", func() error {
		st := b.s.Stats()
		if st.Replayed-before.Replayed != 1 || st.AuthFailed-before.AuthFailed != 2 ||
			st.Malformed-before.Malformed != 1 {
			return errorf("replayed %d auth failed %d malformed %d", st.Replayed-before.Replayed,
				st.AuthFailed-before.AuthFailed, st.Malformed-before.Malformed)
		}
		return nil
	})
	// Nothing of it reached b's bridge: the next frame there is a fresh one.
	a.tap.Inject(ethFrame(bcast, mac(0, 1), "fence", 60))
	if c := countFrames(t, b, marker, "fence", 5*time.Second); c != 0 {
		t.Errorf("%d replayed or forged frames reached the bridge", c)
	}
	// And the address of a stays what heartbeats taught, not the attacker's.
	if info, _ := b.s.PeerInfo(a.m.Name()); info.Endpoint != addrPort(0) {
		t.Errorf("b sends to a at %v after the attack, want %v", info.Endpoint, addrPort(0))
	}
}
