package ovs

import (
	"os"
	"testing"

	"github.com/weavemesh/weave/internal/netlab"
)

// testEtherType marks the broadcast frames the split-horizon check counts.
const testEtherType = 0x88b6

// packetSocket opens an AF_PACKET socket for testEtherType on link in namespace ns.
func packetSocket(t *testing.T, ns, link string) *os.File {
	return netlab.PacketSocketT(t, ns, link, testEtherType)
}

// countFrames counts the frames that arrive on s until it stays quiet (a packet socket of
// one EtherType never sees its own sends).
func countFrames(t *testing.T, s *os.File) int { return netlab.CountFramesT(t, s) }

// burst sends n broadcast frames of testEtherType from send and returns how many each of rx
// received.
func burst(t *testing.T, send *os.File, src byte, n int, rx map[string]*os.File) map[string]int {
	t.Helper()
	frame := make([]byte, 60)
	copy(frame, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0xc1, 0, 0, 0, src, testEtherType >> 8, testEtherType & 0xff})
	for i := 0; i < n; i++ {
		frame[20] = byte(i)
		if _, err := send.Write(frame); err != nil {
			t.Fatal(err)
		}
	}
	got := map[string]int{}
	for name, s := range rx {
		got[name] = countFrames(t, s)
	}
	return got
}
