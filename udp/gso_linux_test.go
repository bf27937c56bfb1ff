package udp

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// fakeConn records what the bind hands to sendmmsg and refuses GSO with EIO when told to,
// as the kernel does when the egress device cannot checksum-offload.
type fakeConn struct {
	refuseGSO bool
	sent      [][]byte // datagrams as the wire would see them
	messages  int
}

func (f *fakeConn) WriteBatch(ms []ipv4.Message, flags int) (int, error) {
	for i, m := range ms {
		seg := 0
		if len(m.OOB) > 0 {
			if f.refuseGSO {
				if i == 0 {
					return 0, unix.EIO
				}
				return i, nil
			}
			seg = segmentOf(m.OOB)
		}
		var all []byte
		for _, b := range m.Buffers {
			all = append(all, b...)
		}
		f.messages++
		if seg == 0 {
			f.sent = append(f.sent, all)
			continue
		}
		for len(all) > 0 {
			n := min(seg, len(all))
			f.sent = append(f.sent, all[:n])
			all = all[n:]
		}
	}
	return len(ms), nil
}

func segmentOf(oob []byte) int {
	h := (*unix.Cmsghdr)(unsafePointer(oob))
	if h.Level != unix.IPPROTO_UDP || h.Type != unix.UDP_SEGMENT {
		return -1
	}
	return int(binary.NativeEndian.Uint16(oob[unix.CmsgLen(0):]))
}

func repeat(size, n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = size
	}
	return out
}

func fakeBind(f *fakeConn) *linuxBind {
	b := &linuxBind{pc: f, local: netip.MustParseAddrPort("192.0.2.1:6783")}
	b.log = (&Config{}).logger()
	b.gso.Store(true)
	b.wpool.New = func() any {
		ws := &writeScratch{msgs: make([]ipv4.Message, IdealBatchSize), oob: make([][]byte, IdealBatchSize),
			addrs: map[netip.AddrPort]*net.UDPAddr{}}
		for i := range ws.oob {
			ws.oob[i] = make([]byte, unix.CmsgSpace(2))
		}
		return ws
	}
	return b
}

func sizesOf(bufs [][]byte) string {
	var s []int
	for _, b := range bufs {
		s = append(s, len(b))
	}
	return fmt.Sprint(s)
}

func TestGSOPacking(t *testing.T) {
	mk := func(sizes ...int) [][]byte {
		var out [][]byte
		for i, n := range sizes {
			out = append(out, bytes.Repeat([]byte{byte(i)}, n))
		}
		return out
	}
	for _, tc := range []struct {
		name     string
		in       [][]byte
		messages int
	}{
		{"equal run", mk(1000, 1000, 1000), 1},
		{"short tail joins", mk(1000, 1000, 10), 1},
		{"short middle splits", mk(1000, 10, 1000), 2},
		{"larger one splits", mk(1000, 1001, 1001), 2},
		{"segment limit", mk(repeat(100, 70)...), 2},
		{"size limit", mk(30000, 30000, 30000), 2},
		{"single", mk(5), 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeConn{}
			b := fakeBind(f)
			if err := b.WriteBatch(tc.in, netip.MustParseAddrPort("192.0.2.2:6783")); err != nil {
				t.Fatal(err)
			}
			if f.messages != tc.messages {
				t.Fatalf("%s went out in %d messages, want %d", sizesOf(tc.in), f.messages, tc.messages)
			}
			if sizesOf(f.sent) != sizesOf(tc.in) {
				t.Fatalf("wire saw %s, want %s", sizesOf(f.sent), sizesOf(tc.in))
			}
			for i := range tc.in {
				if !bytes.Equal(f.sent[i], tc.in[i]) {
					t.Fatalf("datagram %d differs", i)
				}
			}
		})
	}
}

func TestGSOFallbackOnEIO(t *testing.T) {
	f := &fakeConn{refuseGSO: true}
	b := fakeBind(f)
	in := [][]byte{make([]byte, 1000), make([]byte, 1000), make([]byte, 500)}
	if err := b.WriteBatch(in, netip.MustParseAddrPort("192.0.2.2:6783")); err != nil {
		t.Fatalf("WriteBatch after EIO: %v", err)
	}
	if b.GSOActive() || b.Stats().GSOFallbacks != 1 {
		t.Fatalf("gso still active (%v) or fallback not counted (%+v)", b.GSOActive(), b.Stats())
	}
	if f.messages != 3 || sizesOf(f.sent) != "[1000 1000 500]" {
		t.Fatalf("resent as %d messages %s", f.messages, sizesOf(f.sent))
	}
}

func FuzzGROSize(f *testing.F) {
	good := make([]byte, unix.CmsgSpace(4))
	h := (*unix.Cmsghdr)(unsafePointer(good))
	h.Level, h.Type = unix.IPPROTO_UDP, unix.UDP_GRO
	h.SetLen(unix.CmsgLen(4))
	binary.NativeEndian.PutUint32(good[unix.CmsgLen(0):], 1400)
	f.Add(good)
	f.Add(append(bytes.Clone(good), good...))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, oob []byte) {
		if len(oob) > 0 {
			oob = append(make([]byte, 0, len(oob)+8), oob...) // aligned, as the kernel's buffer is
		}
		_ = groSize(oob)
	})
}

func TestGROSize(t *testing.T) {
	oob := make([]byte, unix.CmsgSpace(4))
	h := (*unix.Cmsghdr)(unsafePointer(oob))
	h.Level, h.Type = unix.IPPROTO_UDP, unix.UDP_GRO
	h.SetLen(unix.CmsgLen(4))
	binary.NativeEndian.PutUint32(oob[unix.CmsgLen(0):], 1400)
	if got := groSize(oob); got != 1400 {
		t.Fatalf("groSize = %d", got)
	}
	h.Type = unix.UDP_SEGMENT
	if got := groSize(oob); got != 0 {
		t.Fatalf("groSize of another cmsg = %d", got)
	}
}
