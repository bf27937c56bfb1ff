package mesh

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// hsFrameProxy is a man in the middle between a and b. It passes the clear handshake bytes
// through, then forwards whole frames; in the a->b direction each frame goes through tamper,
// which returns the frames to send in its place (it may hold, duplicate, reorder or alter them).
type hsFrameProxy struct {
	tamper func(index int, frame []byte) [][]byte
	// alterClear, if set, may rewrite the clear handshake steps (0: hello, 1: key) a->b.
	alterClear func(step int, b []byte)
}

func (p *hsFrameProxy) run(t *testing.T, from, to net.Conn, tamper bool) {
	defer to.Close()
	defer from.Close()
	r := bufio.NewReader(from)
	// The clear steps go one at a time: each end waits for the other's before sending more.
	for step, n := range []int{helloSize, keyMsgSize} {
		clear := make([]byte, n)
		if _, err := io.ReadFull(r, clear); err != nil {
			return
		}
		if tamper && p.alterClear != nil {
			p.alterClear(step, clear)
		}
		if _, err := to.Write(clear); err != nil {
			return
		}
	}
	for i := 0; ; i++ {
		var hdr [4]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return
		}
		frame := make([]byte, 4+binary.BigEndian.Uint32(hdr[:]))
		copy(frame, hdr[:])
		if _, err := io.ReadFull(r, frame[4:]); err != nil {
			return
		}
		out := [][]byte{frame}
		if tamper {
			out = p.tamper(i, frame)
		}
		for _, f := range out {
			if _, err := to.Write(f); err != nil {
				return
			}
		}
	}
}

// hsProxied connects a and b through the proxy and handshakes them.
func hsProxied(t *testing.T, pa, pb handshakeParams, tamper func(int, []byte) [][]byte) (*framedConn, *framedConn) {
	t.Helper()
	a, pa1 := net.Pipe()
	pb1, b := net.Pipe()
	p := &hsFrameProxy{tamper: tamper}
	go p.run(t, pa1, pb1, true)
	go p.run(t, pb1, pa1, false)
	ra, rb := hsRun(a, b, pa, pb)
	if ra.err != nil || rb.err != nil {
		t.Fatalf("handshake through proxy: %v / %v", ra.err, rb.err)
	}
	t.Cleanup(func() { ra.conn.Close(); rb.conn.Close() })
	return ra.conn, rb.conn
}

func TestHandshakeDetectsAlteredCleartext(t *testing.T) {
	// A man in the middle widens one side's advertised version range (a downgrade attack in
	// the making). The keys do not cover those bytes; the sealed transcript does.
	a, pa1 := net.Pipe()
	pb1, b := net.Pipe()
	p := &hsFrameProxy{
		tamper: func(_ int, f []byte) [][]byte { return [][]byte{f} },
		alterClear: func(step int, b []byte) {
			if step == 0 {
				b[len(b)-1] = 9
			}
		},
	}
	go p.run(t, pa1, pb1, true)
	go p.run(t, pb1, pa1, false)
	ra, rb := hsRun(a, b, hsParams(1, "pw"), hsParams(2, "pw"))
	for _, r := range []hsResult{ra, rb} {
		if !errors.Is(r.err, ErrBadHandshake) || !strings.Contains(r.err.Error(), "transcript mismatch") {
			t.Errorf("got %v, want a transcript mismatch", r.err)
		}
	}
}

func TestConnDetectsReplayReorderForgery(t *testing.T) {
	// Frames 0 and 1 a->b are the confirmation and the intro; application messages start at 2.
	const first = 2
	var held []byte
	for _, tc := range []struct {
		name   string
		tamper func(i int, f []byte) [][]byte
		// okBefore: how many messages arrive intact before the attack shows.
		okBefore int
	}{
		{"replay", func(i int, f []byte) [][]byte {
			if i == first {
				return [][]byte{f, f}
			}
			return [][]byte{f}
		}, 1},
		{"reorder", func(i int, f []byte) [][]byte {
			switch i {
			case first:
				held = f
				return nil
			case first + 1:
				return [][]byte{f, held}
			}
			return [][]byte{f}
		}, 0},
		{"drop", func(i int, f []byte) [][]byte {
			if i == first {
				return nil
			}
			return [][]byte{f}
		}, 0},
		{"bit flip in body", func(i int, f []byte) [][]byte {
			if i == first+1 {
				g := bytes.Clone(f)
				g[len(g)/2] ^= 0x10
				return [][]byte{g}
			}
			return [][]byte{f}
		}, 1},
		{"bit flip in tag", func(i int, f []byte) [][]byte {
			if i == first {
				g := bytes.Clone(f)
				g[len(g)-1] ^= 1
				return [][]byte{g}
			}
			return [][]byte{f}
		}, 0},
		{"length changed", func(i int, f []byte) [][]byte {
			// One byte cut from the end and the header adjusted: a well-formed frame whose
			// authenticated header no longer matches.
			if i == first {
				g := bytes.Clone(f[:len(f)-1])
				binary.BigEndian.PutUint32(g, uint32(len(g)-4))
				return [][]byte{g}
			}
			return [][]byte{f}
		}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var cb connCounters
			pa, pb := hsParams(1, "pw"), hsParams(2, "pw")
			pb.Counters = &cb
			ca, cbConn := hsProxied(t, pa, pb, tc.tamper)
			go func() {
				for i := range 4 {
					if ca.Send([]byte(fmt.Sprintf("message %d", i))) != nil {
						return
					}
				}
			}()
			for i := range tc.okBefore {
				m, err := cbConn.Receive()
				if err != nil || string(m) != fmt.Sprintf("message %d", i) {
					t.Fatalf("message %d: got %q, %v", i, m, err)
				}
			}
			_, err := cbConn.Receive()
			if !errors.Is(err, ErrReplayOrForgery) {
				t.Fatalf("got %v, want ErrReplayOrForgery", err)
			}
			if n := cb.ReplayOrForgery.Load(); n != 1 {
				t.Errorf("replay/forgery counter %d, want 1", n)
			}
			// The error is final and the connection is closed.
			if _, err2 := cbConn.Receive(); !errors.Is(err2, ErrReplayOrForgery) {
				t.Errorf("second receive: %v, want the same error", err2)
			}
			if err := cbConn.Send([]byte("x")); err == nil {
				t.Errorf("send on a connection closed after forgery succeeded")
			}
		})
	}
}

func TestConnRefusesOversizeFrame(t *testing.T) {
	for _, pw := range []string{"", "pw"} {
		t.Run(fmt.Sprintf("password=%q", pw), func(t *testing.T) {
			var cb connCounters
			pb := hsParams(2, pw)
			pb.Counters = &cb
			limit, firstApp := MaxMessageSize, 1 // plain: frame 0 is the intro
			if pw != "" {
				limit, firstApp = MaxMessageSize+sealOverhead, 2 // plus the confirmation
			}
			// The first application frame is replaced by a header announcing one byte over
			// the limit: the length alone is refused, before any body arrives.
			ca, cbConn := hsProxied(t, hsParams(1, pw), pb, func(i int, f []byte) [][]byte {
				if i == firstApp {
					return [][]byte{binary.BigEndian.AppendUint32(nil, uint32(limit+1))}
				}
				return [][]byte{f}
			})
			go func() { _ = ca.Send([]byte("hi")) }()
			if _, err := cbConn.Receive(); !errors.Is(err, ErrMessageTooLarge) {
				t.Fatalf("got %v, want ErrMessageTooLarge", err)
			}
			if n := cb.MessageTooLarge.Load(); n != 1 {
				t.Errorf("too-large counter %d, want 1", n)
			}
		})
	}
}

func TestFrameReaderLimits(t *testing.T) {
	frame := func(n uint32, body []byte) []byte {
		b := binary.BigEndian.AppendUint32(nil, n)
		return append(b, body...)
	}
	t.Run("too large", func(t *testing.T) {
		fr := frameReader{r: bytes.NewReader(frame(101, make([]byte, 101)))}
		if _, err := fr.next(100); !errors.Is(err, ErrMessageTooLarge) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("truncated body", func(t *testing.T) {
		fr := frameReader{r: bytes.NewReader(frame(10, []byte("abc")))}
		if _, err := fr.next(100); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("clean EOF", func(t *testing.T) {
		fr := frameReader{r: bytes.NewReader(nil)}
		if _, err := fr.next(100); !errors.Is(err, io.EOF) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("announced but absent", func(t *testing.T) {
		// A peer announcing the maximum and sending a little costs about one chunk of memory.
		fr := frameReader{r: bytes.NewReader(frame(MaxMessageSize, make([]byte, 100)))}
		if _, err := fr.next(MaxMessageSize); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("got %v", err)
		}
		if cap(fr.buf) > readChunk {
			t.Errorf("buffer grew to %d bytes for 100 received", cap(fr.buf))
		}
	})
	t.Run("sequence and reuse", func(t *testing.T) {
		big := bytes.Repeat([]byte{7}, 3*readChunk+5)
		var in []byte
		in = append(in, frame(3, []byte("one"))...)
		in = append(in, frame(uint32(len(big)), big)...)
		in = append(in, frame(0, nil)...)
		in = append(in, frame(3, []byte("two"))...)
		fr := frameReader{r: bytes.NewReader(in)}
		for _, want := range [][]byte{[]byte("one"), big, {}, []byte("two")} {
			got, err := fr.next(MaxMessageSize)
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("got %d bytes, %v; want %d", len(got), err, len(want))
			}
		}
	})
}

func TestConnSendTooLarge(t *testing.T) {
	ca, _, _, _ := hsConnected(t, hsParams(1, "pw"), hsParams(2, "pw"))
	if err := ca.Send(make([]byte, MaxMessageSize+1)); !errors.Is(err, ErrMessageTooLarge) {
		t.Fatalf("got %v, want ErrMessageTooLarge", err)
	}
	// Refused before writing: the connection still works.
	if err := ca.Send([]byte("ok")); err != nil {
		t.Fatalf("send after refusal: %v", err)
	}
}

func TestConnCloseAndDeadlines(t *testing.T) {
	ca, cb, _, _ := hsConnected(t, hsParams(1, "pw"), hsParams(2, "pw"))

	// A read deadline ends a blocked Receive with a timeout.
	if err := cb.SetReadDeadline(time.Now().Add(50 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if _, err := cb.Receive(); err == nil || !strings.Contains(err.Error(), "timeout") {
		t.Fatalf("receive past deadline: %v", err)
	}

	// Close unblocks the peer (EOF) and is idempotent.
	done := make(chan error, 1)
	go func() { _, err := ca.Receive(); done <- err }()
	if err := cb.Close(); err != nil {
		// cb was already closed by its fatal receive error; Close still reports that result.
		t.Logf("close: %v", err)
	}
	first := cb.Close()
	if second := cb.Close(); second != first {
		t.Errorf("Close not idempotent: %v then %v", first, second)
	}
	select {
	case err := <-done:
		if !errors.Is(err, io.EOF) {
			t.Errorf("peer receive after close: %v, want EOF", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("peer Receive still blocked after Close")
	}
	if err := ca.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	if err := ca.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
}

func TestConnAddrs(t *testing.T) {
	a, b := hsTCPPair(t)
	ra, rb := hsRun(a, b, hsParams(1, ""), hsParams(2, ""))
	if ra.err != nil || rb.err != nil {
		t.Fatal(ra.err, rb.err)
	}
	defer ra.conn.Close()
	defer rb.conn.Close()
	if ra.conn.RemoteAddr().String() != rb.conn.LocalAddr().String() || ra.conn.LocalAddr().String() != rb.conn.RemoteAddr().String() {
		t.Errorf("addresses: a %v->%v, b %v->%v", ra.conn.LocalAddr(), ra.conn.RemoteAddr(), rb.conn.LocalAddr(), rb.conn.RemoteAddr())
	}
	if _, _, ok := ra.conn.DataKeys(); ok {
		t.Errorf("DataKeys ok on an unencrypted connection")
	}
}

func BenchmarkConnThroughput(b *testing.B) {
	for _, pw := range []string{"", "pw"} {
		for _, size := range []int{256, 16 << 10, 1 << 20} {
			name := fmt.Sprintf("encrypted=%v/size=%d", pw != "", size)
			b.Run(name, func(b *testing.B) {
				ca, cb, _, _ := hsConnected(b, hsParams(1, pw), hsParams(2, pw))
				msg := make([]byte, size)
				done := make(chan error, 1)
				go func() {
					for range b.N {
						if _, err := cb.Receive(); err != nil {
							done <- err
							return
						}
					}
					done <- nil
				}()
				b.SetBytes(int64(size))
				b.ReportAllocs()
				b.ResetTimer()
				for range b.N {
					if err := ca.Send(msg); err != nil {
						b.Fatal(err)
					}
				}
				if err := <-done; err != nil {
					b.Fatal(err)
				}
			})
		}
	}
}
