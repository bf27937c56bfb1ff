package tap

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/weavemesh/weave/internal/testutil"
	"github.com/weavemesh/weave/tap/frame"
)

// bridgePair opens two taps on one bridge in a fresh namespace: frames written to the
// first are flooded by the bridge to the second (unknown unicast), so what Write produced
// can be compared with what Read returns, byte for byte.
func bridgePair(t *testing.T, offload bool) (w, r Device) {
	testutil.RequireRoot(t)
	testutil.RequireCommands(t, "ip")
	ns := fmt.Sprintf("wvtapb%d%03d", os.Getpid()%100000, rand.IntN(1000))
	newNS(t, ns)
	var err error
	inNS(t, ns, func() {
		if w, err = Open(Config{Name: "tw", Offload: offload}); err != nil {
			return
		}
		r, err = Open(Config{Name: "tr", Offload: offload})
	})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = w.Close(); _ = r.Close() })
	run(t, "ip", "-n", ns, "link", "add", "wbr", "type", "bridge")
	for _, dev := range []string{"tw", "tr", "wbr"} {
		if dev != "wbr" {
			run(t, "ip", "-n", ns, "link", "set", dev, "master", "wbr")
		}
		run(t, "ip", "-n", ns, "link", "set", dev, "up")
	}
	// Keep IPv6 autoconfiguration chatter (router solicitations, MLD) off the bridge.
	run(t, "ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
	return w, r
}

// readFrames reads until it has n frames that come from srcMAC (other frames are ignored).
// A batch smaller than a super-frame exercises the segments left pending between Reads.
func readFrames(t *testing.T, r Device, n int, srcMAC byte, batch int) [][]byte {
	t.Helper()
	bufs := newBufs(batch, Headroom+2048)
	sizes := make([]int, len(bufs))
	var out [][]byte
	timer := time.AfterFunc(10*time.Second, func() { _ = r.Close() })
	defer timer.Stop()
	for len(out) < n {
		k, err := r.Read(bufs, sizes, Headroom)
		if err != nil {
			t.Fatalf("Read after %d of %d frames: %v", len(out), n, err)
		}
		for i := 0; i < k; i++ {
			f := bufs[i][Headroom : Headroom+sizes[i]]
			if f[11] == srcMAC && f[6] == 0x0a {
				out = append(out, bytes.Clone(f))
			}
		}
	}
	return out
}

func TestWriteCoalescedReadSegmentedThroughBridge(t *testing.T) {
	for i, offload := range []bool{true, false} {
		for j, v := range variants() {
			batch := []int{IdealBatchSize, 7}[(i+j)%2]
			t.Run(fmt.Sprintf("offload=%v/%s/batch=%d", offload, v.name, batch), func(t *testing.T) {
				w, r := bridgePair(t, offload)
				rng := rand.New(rand.NewPCG(11, 12))
				s := randomSpec(rng, v.v6, v.vlan)
				s.flags = frame.TCPFlagACK | frame.TCPFlagPSH
				s.srcMAC = 0x42
				s.payload = s.payload[:min(len(s.payload), 1400*30)]
				for len(s.payload) < 1400*30 {
					s.payload = append(s.payload, byte(len(s.payload)))
				}
				segs := refSegment(s, 1400)
				bufs := segmentsToBufs(segs, 65535+18)
				n, err := w.Write(bufs, Headroom)
				if err != nil || n != len(segs) {
					t.Fatalf("Write = %d, %v; want %d", n, err, len(segs))
				}
				got := readFrames(t, r, len(segs), 0x42, batch)
				for i := range segs {
					if !bytes.Equal(got[i], segs[i]) {
						t.Fatalf("frame %d read back differs from what was written:\n got %x\nwant %x", i, got[i][:80], segs[i][:80])
					}
				}
				ws, rs := w.(StatsReporter).Stats(), r.(StatsReporter).Stats()
				t.Logf("writer %+v, reader %+v", ws, rs)
				if offload && (ws.TxWrites != 1 || rs.RxSuperFrames == 0) {
					t.Fatalf("%d segments took %d kernel writes and %d super-frames on read; want 1 write and a super-frame",
						len(segs), ws.TxWrites, rs.RxSuperFrames)
				}
			})
		}
	}
}

func TestNonIPFramesThroughBridge(t *testing.T) {
	for _, offload := range []bool{true, false} {
		t.Run(fmt.Sprintf("offload=%v", offload), func(t *testing.T) {
			w, r := bridgePair(t, offload)
			var frames [][]byte
			for i := range 20 {
				f := []byte{0x0a, 0, 0, 0, 0, 9, 0x0a, 0, 0, 0, 0, 0x43, 0x88, 0xb5} // local experimental ethertype
				f = append(f, bytes.Repeat([]byte{byte(i)}, 46+i*50)...)
				frames = append(frames, f)
			}
			// A VLAN-tagged ARP frame, too.
			frames = append(frames, append([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0a, 0, 0, 0, 0, 0x43,
				0x81, 0x00, 0x00, 0x05, 0x08, 0x06}, bytes.Repeat([]byte{7}, 28)...))
			if n, err := w.Write(segmentsToBufs(frames, 0), Headroom); err != nil || n != len(frames) {
				t.Fatalf("Write = %d, %v", n, err)
			}
			got := readFrames(t, r, len(frames), 0x43, IdealBatchSize)
			for i := range frames {
				if !bytes.Equal(got[i], frames[i]) {
					t.Fatalf("frame %d changed on the way: %x", i, got[i])
				}
			}
		})
	}
}

func TestDeviceReadWriteAllocateNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation budgets do not hold under the race detector")
	}
	for _, offload := range []bool{true, false} {
		t.Run(fmt.Sprintf("offload=%v", offload), func(t *testing.T) {
			w, r := bridgePair(t, offload)
			s := superSpec{flags: frame.TCPFlagACK, payload: make([]byte, 1400*8), srcMAC: 0x44, seq: 1}
			segs := refSegment(s, 1400)
			wbufs := segmentsToBufs(segs, 65535+18)
			rbufs := newBufs(IdealBatchSize, Headroom+2048)
			sizes := make([]int, len(rbufs))
			allocs := testing.AllocsPerRun(20, func() {
				for i, f := range segs {
					wbufs[i] = wbufs[i][:Headroom+len(f)]
					copy(wbufs[i][Headroom:], f)
				}
				if n, err := w.Write(wbufs, Headroom); err != nil || n != len(segs) {
					t.Fatalf("Write = %d, %v", n, err)
				}
				for got := 0; got < len(segs); {
					n, err := r.Read(rbufs, sizes, Headroom)
					if err != nil {
						t.Fatal(err)
					}
					for i := 0; i < n; i++ {
						if rbufs[i][Headroom+11] == 0x44 {
							got++
						}
					}
				}
			})
			if allocs != 0 {
				t.Fatalf("a write and read of %d frames allocates %v times", len(segs), allocs)
			}
		})
	}
}

func TestFrameTooBigForBufferIsDropped(t *testing.T) {
	for _, offload := range []bool{true, false} {
		t.Run(fmt.Sprintf("offload=%v", offload), func(t *testing.T) {
			w, r := bridgePair(t, offload)
			mk := func(n int) []byte {
				f := []byte{0x0a, 0, 0, 0, 0, 9, 0x0a, 0, 0, 0, 0, 0x45, 0x88, 0xb5}
				return append(f, make([]byte, n-len(f))...)
			}
			if _, err := w.Write(segmentsToBufs([][]byte{mk(300), mk(80)}, 0), Headroom); err != nil {
				t.Fatal(err)
			}
			bufs := [][]byte{make([]byte, Headroom+100)}
			sizes := []int{0}
			timer := time.AfterFunc(10*time.Second, func() { _ = r.Close() })
			defer timer.Stop()
			for {
				n, err := r.Read(bufs, sizes, Headroom)
				if err != nil {
					t.Fatalf("Read: %v", err)
				}
				if n == 1 && bufs[0][Headroom+11] == 0x45 {
					break
				}
			}
			if sizes[0] != 80 {
				t.Fatalf("got the %d-byte frame, want the 80-byte one after the 300-byte one was dropped", sizes[0])
			}
			if st := r.(StatsReporter).Stats(); st.RxDropped != 1 {
				t.Fatalf("RxDropped = %d, want 1", st.RxDropped)
			}
		})
	}
}
