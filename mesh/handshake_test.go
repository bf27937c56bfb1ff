package mesh

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// hsParams returns valid params for a test peer numbered n.
func hsParams(n int, password string) handshakeParams {
	p := handshakeParams{
		Name:     PeerName(0x0a0000000000 + uint64(n)),
		NickName: fmt.Sprintf("host-%d", n),
		UID:      uint64(1000 + n),
		Features: map[string]string{"overlays": "fastdp sleeve", "peer": fmt.Sprint(n)},
		Timeout:  5 * time.Second,
	}
	if password != "" {
		p.Password = []byte(password)
	}
	return p
}

// hsTCPPair returns the two ends of a loopback TCP connection.
func hsTCPPair(t testing.TB) (dialled, accepted net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() { c, err := ln.Accept(); ch <- res{c, err} }()
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		d.Close()
		t.Fatal(r.err)
	}
	t.Cleanup(func() { d.Close(); r.c.Close() })
	return d, r.c
}

type hsResult struct {
	conn  *framedConn
	intro remoteIntro
	err   error
}

// hsRun runs both handshakes at once and returns both results.
func hsRun(a, b net.Conn, pa, pb handshakeParams) (ra, rb hsResult) {
	pa.Outbound = true
	var wg sync.WaitGroup
	wg.Go(func() { ra.conn, ra.intro, ra.err = handshake(context.Background(), a, pa) })
	wg.Go(func() { rb.conn, rb.intro, rb.err = handshake(context.Background(), b, pb) })
	wg.Wait()
	return ra, rb
}

// hsConnected returns two handshaken connections over loopback TCP.
func hsConnected(t testing.TB, pa, pb handshakeParams) (*framedConn, *framedConn, remoteIntro, remoteIntro) {
	t.Helper()
	a, b := hsTCPPair(t)
	ra, rb := hsRun(a, b, pa, pb)
	if ra.err != nil || rb.err != nil {
		t.Fatalf("handshake: %v / %v", ra.err, rb.err)
	}
	t.Cleanup(func() { ra.conn.Close(); rb.conn.Close() })
	return ra.conn, rb.conn, ra.intro, rb.intro
}

func TestHandshakeHappyPath(t *testing.T) {
	for _, pw := range []string{"", "s3cret"} {
		t.Run(fmt.Sprintf("password=%q", pw), func(t *testing.T) {
			pa, pb := hsParams(1, pw), hsParams(2, pw)
			ca, cb, ia, ib := hsConnected(t, pa, pb)

			// Each side sees the other's identity, and both agree on the connection ID.
			if ia.Name != pb.Name || ia.NickName != pb.NickName || ia.UID != pb.UID {
				t.Errorf("a sees %+v, want b's identity", ia)
			}
			if ib.Name != pa.Name || ib.NickName != pa.NickName || ib.UID != pa.UID {
				t.Errorf("b sees %+v, want a's identity", ib)
			}
			if ia.ConnID != ib.ConnID || ia.ConnID == 0 {
				t.Errorf("conn IDs %x / %x: want equal, non-zero", ia.ConnID, ib.ConnID)
			}
			if ia.Features["peer"] != "2" || ib.Features["overlays"] != "fastdp sleeve" || len(ia.Features) != 2 {
				t.Errorf("features: a got %v, b got %v", ia.Features, ib.Features)
			}
			if ia.Version != ProtocolMaxVersion || ib.Version != ProtocolMaxVersion {
				t.Errorf("versions %d/%d, want %d", ia.Version, ib.Version, ProtocolMaxVersion)
			}
			if !ca.Outbound() || cb.Outbound() {
				t.Errorf("outbound: dialler %v, acceptor %v", ca.Outbound(), cb.Outbound())
			}
			enc := pw != ""
			if ia.Encrypted != enc || ib.Encrypted != enc || ca.Encrypted() != enc || cb.Encrypted() != enc {
				t.Errorf("encrypted: intro %v/%v conn %v/%v, want %v", ia.Encrypted, ib.Encrypted, ca.Encrypted(), cb.Encrypted(), enc)
			}

			// Messages both ways, including empty and near-maximum ones.
			big := bytes.Repeat([]byte("0123456789abcdef"), (MaxMessageSize-7)/16)
			big = append(big, "tail"...)
			for _, msg := range [][]byte{[]byte("hello"), {}, big, []byte("after big")} {
				hsExpectDelivery(t, ca, cb, msg)
				hsExpectDelivery(t, cb, ca, msg)
			}
		})
	}
}

func hsExpectDelivery(t *testing.T, from, to *framedConn, msg []byte) {
	t.Helper()
	errc := make(chan error, 1)
	go func() { errc <- from.Send(msg) }()
	got, err := to.Receive()
	if err != nil {
		t.Fatalf("receive: %v", err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("received %d bytes, want %d (equal content)", len(got), len(msg))
	}
	if err := <-errc; err != nil {
		t.Fatalf("send: %v", err)
	}
}

func TestConnConcurrentSendKeepsOrder(t *testing.T) {
	for _, pw := range []string{"", "pw"} {
		t.Run(fmt.Sprintf("password=%q", pw), func(t *testing.T) {
			ca, cb, _, _ := hsConnected(t, hsParams(1, pw), hsParams(2, pw))
			const senders, perSender = 8, 300
			var wg sync.WaitGroup
			errs := make(chan error, senders)
			for s := range senders {
				wg.Go(func() {
					msg := make([]byte, 8+s*100)
					for i := range perSender {
						binary.BigEndian.PutUint32(msg, uint32(s))
						binary.BigEndian.PutUint32(msg[4:], uint32(i))
						if err := ca.Send(msg); err != nil {
							errs <- err
							return
						}
					}
				})
			}
			next := make([]uint32, senders)
			for range senders * perSender {
				m, err := cb.Receive()
				if err != nil {
					t.Fatalf("receive: %v", err)
				}
				s, i := binary.BigEndian.Uint32(m), binary.BigEndian.Uint32(m[4:])
				if int(s) >= senders || i != next[s] || len(m) != 8+int(s)*100 {
					t.Fatalf("got sender %d seq %d len %d, want seq %d", s, i, len(m), next[s])
				}
				next[s]++
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatalf("send: %v", err)
			}
		})
	}
}

func TestHandshakeWrongPassword(t *testing.T) {
	var ca, cb connCounters
	pa, pb := hsParams(1, "right"), hsParams(2, "wrong")
	pa.Counters, pb.Counters = &ca, &cb
	a, b := hsTCPPair(t)
	ra, rb := hsRun(a, b, pa, pb)
	for _, r := range []hsResult{ra, rb} {
		if !errors.Is(r.err, ErrWrongPassword) {
			t.Errorf("got %v, want ErrWrongPassword", r.err)
		}
		if r.err != nil && !strings.Contains(r.err.Error(), "authentication failed: wrong password?") {
			t.Errorf("error %q does not say what happened", r.err)
		}
	}
	if ca.WrongPassword.Load() != 1 || cb.WrongPassword.Load() != 1 {
		t.Errorf("wrong-password counters %d/%d, want 1/1", ca.WrongPassword.Load(), cb.WrongPassword.Load())
	}
	if ca.ReplayOrForgery.Load()+cb.ReplayOrForgery.Load() != 0 {
		t.Errorf("a wrong password was also counted as a forgery")
	}
}

func TestHandshakePasswordOnOneSide(t *testing.T) {
	var cp, cn connCounters
	withPw, without := hsParams(1, "pw"), hsParams(2, "")
	withPw.Counters, without.Counters = &cp, &cn
	a, b := hsTCPPair(t)
	ra, rb := hsRun(a, b, withPw, without)
	if !errors.Is(ra.err, ErrPasswordMismatch) || !strings.Contains(ra.err.Error(), "password configured here but peer requested an unencrypted connection") {
		t.Errorf("side with password: got %v", ra.err)
	}
	want := fmt.Sprintf("peer %s requires a password but none is configured here", b.RemoteAddr())
	if !errors.Is(rb.err, ErrPasswordMismatch) || !strings.Contains(rb.err.Error(), want) {
		t.Errorf("side without password: got %v, want it to contain %q", rb.err, want)
	}
	if cp.PasswordMismatch.Load() != 1 || cn.PasswordMismatch.Load() != 1 {
		t.Errorf("counters %d/%d, want 1/1", cp.PasswordMismatch.Load(), cn.PasswordMismatch.Load())
	}
}

// hsRawPeer runs handshake against a scripted peer over net.Pipe: the peer writes script,
// then drains whatever we send until closed.
func hsRawPeer(t *testing.T, p handshakeParams, script []byte) error {
	t.Helper()
	a, b := net.Pipe()
	defer b.Close()
	go func() { _, _ = b.Write(script) }()
	go func() { _, _ = io.Copy(io.Discard, b) }()
	c, _, err := handshake(context.Background(), a, p)
	if err == nil {
		c.Close()
	}
	return err
}

func TestHandshakeVersionMismatch(t *testing.T) {
	var cc connCounters
	p := hsParams(1, "")
	p.Counters = &cc
	// A Weave Net 2.x router (protocol 1..2) met during a migration.
	err := hsRawPeer(t, p, []byte("weave\x01\x02"))
	if !errors.Is(err, ErrVersionMismatch) {
		t.Fatalf("got %v, want ErrVersionMismatch", err)
	}
	if !strings.Contains(err.Error(), "ours [3,3], peer's [1,2]") {
		t.Errorf("error %q does not show both ranges", err)
	}
	if cc.VersionMismatch.Load() != 1 {
		t.Errorf("counter %d, want 1", cc.VersionMismatch.Load())
	}
}

func TestNegotiateVersion(t *testing.T) {
	for _, tc := range []struct {
		ourMin, ourMax, theirMin, theirMax byte
		want                               byte
		err                                error
	}{
		{1, 1, 1, 1, 1, nil},
		{1, 1, 1, 3, 1, nil},
		{1, 3, 2, 5, 3, nil},
		{2, 3, 1, 2, 2, nil},
		{1, 1, 2, 2, 0, ErrVersionMismatch},
		{3, 4, 1, 2, 0, ErrVersionMismatch},
		{1, 1, 2, 1, 0, ErrBadHandshake},
		{1, 1, 0, 1, 0, ErrBadHandshake},
	} {
		v, err := negotiateVersion(tc.ourMin, tc.ourMax, []byte{'w', 'e', 'a', 'v', 'e', tc.theirMin, tc.theirMax})
		if v != tc.want || !errors.Is(err, tc.err) || (tc.err == nil) != (err == nil) {
			t.Errorf("ours [%d,%d] theirs [%d,%d]: got %d, %v; want %d, %v", tc.ourMin, tc.ourMax, tc.theirMin, tc.theirMax, v, err, tc.want, tc.err)
		}
	}
	if _, err := negotiateVersion(1, 1, []byte("HTTP/1.")); !errors.Is(err, ErrBadHandshake) {
		t.Errorf("not-weave greeting: got %v", err)
	}
}

func TestHandshakeMalformedPeer(t *testing.T) {
	hello := "weave\x03\x03"
	plainKey := string(make([]byte, 33))
	frame := func(body string) string {
		var h [4]byte
		binary.BigEndian.PutUint32(h[:], uint32(len(body)))
		return string(h[:]) + body
	}
	for _, tc := range []struct {
		name, script string
		password     string
		want         error
	}{
		{"not weave", "GET / HTTP/1.1\r\n\r\n" + strings.Repeat("x", 64), "", errBadGreeting},
		{"bad flag", hello + "\x07" + strings.Repeat("\x00", 32), "", ErrBadHandshake},
		{"zero public key", hello + "\x01" + strings.Repeat("\x00", 32), "pw", ErrBadHandshake},
		{"low-order public key", hello + "\x01\x01" + strings.Repeat("\x00", 31), "pw", ErrBadHandshake},
		{"intro too large", hello + plainKey + "\x7f\xff\xff\xff", "", ErrBadHandshake},
		{"intro garbage", hello + plainKey + frame("\x03abc"), "", ErrBadHandshake},
		{"intro missing name", hello + plainKey + frame(string(hsEncodeEntries([][2]string{
			{"NickName", "x"}, {"UID", "1"}, {"ConnID", "2"}}))), "", ErrBadHandshake},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var cc connCounters
			p := hsParams(1, tc.password)
			p.Counters = &cc
			err := hsRawPeer(t, p, []byte(tc.script))
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			// A greeting that is not weave's is counted apart (port scans, other protocols).
			counter := &cc.BadHandshake
			if errors.Is(tc.want, errBadGreeting) {
				counter = &cc.BadGreeting
			}
			if n := counter.Load(); n != 1 {
				t.Errorf("counter %d, want 1 (%+v)", n, cc.reasons())
			}
			// Counting is optional: the same refusal without counters.
			p.Counters = nil
			if err := hsRawPeer(t, p, []byte(tc.script)); !errors.Is(err, tc.want) {
				t.Fatalf("without counters: got %v, want %v", err, tc.want)
			}
		})
	}
}

// hsEncodeEntries builds an intro message from raw entries, bypassing validation.
func hsEncodeEntries(entries [][2]string) []byte {
	b := []byte{byte(len(entries))}
	for _, e := range entries {
		b = append(b, byte(len(e[0])))
		b = append(b, e[0]...)
		b = binary.BigEndian.AppendUint16(b, uint16(len(e[1])))
		b = append(b, e[1]...)
	}
	return b
}

func TestHandshakeReflectedStream(t *testing.T) {
	// A peer that echoes our bytes back sends our own public key: refused, not connected to
	// ourselves under keys an attacker could replay with.
	a, b := net.Pipe()
	defer b.Close()
	go func() { _, _ = io.Copy(b, b) }()
	_, _, err := handshake(context.Background(), a, hsParams(1, "pw"))
	if !errors.Is(err, ErrBadHandshake) || !strings.Contains(err.Error(), "echoed our public key") {
		t.Fatalf("got %v, want ErrBadHandshake for an echoed key", err)
	}
}

func TestHandshakeTimeout(t *testing.T) {
	var cc connCounters
	p := hsParams(1, "pw")
	p.Timeout = 150 * time.Millisecond
	p.Counters = &cc
	a, b := hsTCPPair(t) // b never speaks (the kernel buffers our hello)
	_ = b
	start := time.Now()
	_, _, err := handshake(context.Background(), a, p)
	elapsed := time.Since(start)
	if !errors.Is(err, ErrHandshakeTimeout) {
		t.Fatalf("got %v, want ErrHandshakeTimeout", err)
	}
	if elapsed < p.Timeout || elapsed > p.Timeout+2*time.Second {
		t.Errorf("returned after %v, want about %v", elapsed, p.Timeout)
	}
	if cc.HandshakeTimeout.Load() != 1 {
		t.Errorf("timeout counter %d, want 1", cc.HandshakeTimeout.Load())
	}
	// The connection was closed: the silent peer sees EOF.
	_ = b.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(b); err != nil {
		t.Errorf("silent peer: reading until EOF: %v", err)
	}
}

func TestHandshakeContextCancel(t *testing.T) {
	var cc connCounters
	p := hsParams(1, "pw")
	p.Counters = &cc
	a, b := hsTCPPair(t) // b never speaks
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { _, _, err := handshake(ctx, a, p); errc <- err }()
	// Wait until the hello is on the wire, so the cancel hits a handshake in flight.
	hello := make([]byte, helloSize)
	if _, err := io.ReadFull(b, hello); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) || errors.Is(err, ErrHandshakeTimeout) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("handshake still running after cancel")
	}
	if n := cc.HandshakeTimeout.Load() + cc.BadHandshake.Load(); n != 0 {
		t.Errorf("a cancelled handshake was counted as a peer failure (%d)", n)
	}
	// Already cancelled: refused at once, connection closed.
	c1, c2 := net.Pipe()
	defer c2.Close()
	if _, _, err := handshake(ctx, c1, p); !errors.Is(err, context.Canceled) {
		t.Errorf("pre-cancelled: got %v", err)
	}
	if _, err := c2.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("pre-cancelled: conn not closed: %v", err)
	}
}

func TestHandshakeInvalidParams(t *testing.T) {
	for name, mod := range map[string]func(*handshakeParams){
		"zero name":       func(p *handshakeParams) { p.Name = 0 },
		"name > 48 bits":  func(p *handshakeParams) { p.Name = 1 << 50 },
		"zero UID":        func(p *handshakeParams) { p.UID = 0 },
		"long nickname":   func(p *handshakeParams) { p.NickName = strings.Repeat("n", maxNickLen+1) },
		"control in nick": func(p *handshakeParams) { p.NickName = "a\nb" },
		"reserved key":    func(p *handshakeParams) { p.Features = map[string]string{"UID": "7"} },
		"empty key":       func(p *handshakeParams) { p.Features = map[string]string{"": "7"} },
		"long value": func(p *handshakeParams) {
			p.Features = map[string]string{"k": strings.Repeat("v", maxFeatureValueLen+1)}
		},
		"bad versions": func(p *handshakeParams) { p.MinVersion, p.MaxVersion = 1, 9 },
		"too many features": func(p *handshakeParams) {
			p.Features = map[string]string{}
			for i := range maxFeatures + 1 {
				p.Features[fmt.Sprint("k", i)] = "v"
			}
		},
	} {
		t.Run(name, func(t *testing.T) {
			p := hsParams(1, "")
			mod(&p)
			a, b := net.Pipe()
			defer b.Close()
			_, _, err := handshake(context.Background(), a, p)
			if err == nil || !strings.Contains(err.Error(), "invalid handshake params") {
				t.Fatalf("got %v, want invalid params", err)
			}
			// Refused before anything was written, and a was closed.
			if _, err := b.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
				t.Errorf("peer read: %v, want EOF", err)
			}
		})
	}
}

func TestIntroRoundTripAndValidation(t *testing.T) {
	p := hsParams(7, "")
	p.NickName = "hôte-7"
	if err := p.validate(); err != nil {
		t.Fatal(err)
	}
	in, err := decodeIntro(encodeIntro(&p, 0xdeadbeef))
	if err != nil {
		t.Fatal(err)
	}
	if in.Name != p.Name || in.NickName != p.NickName || in.UID != p.UID || in.ConnID != 0xdeadbeef ||
		len(in.Features) != 2 || in.Features["overlays"] != "fastdp sleeve" {
		t.Fatalf("round trip: got %+v", in)
	}

	valid := [][2]string{{"Name", "0a:00:00:00:00:01"}, {"NickName", "n"}, {"UID", "5"}, {"ConnID", "0"}}
	with := func(extra ...[2]string) []byte {
		return hsEncodeEntries(append(append([][2]string{}, valid...), extra...))
	}
	replace := func(i int, v string) []byte {
		e := append([][2]string{}, valid...)
		e[i][1] = v
		return hsEncodeEntries(e)
	}
	if _, err := decodeIntro(with()); err != nil {
		t.Fatalf("minimal valid intro refused: %v", err)
	}
	for name, msg := range map[string][]byte{
		"empty":          {},
		"duplicate":      with([2]string{"Name", "0a:00:00:00:00:02"}),
		"trailing bytes": append(with(), 0),
		"truncated":      with()[:10],
		"zero name":      replace(0, "00:00:00:00:00:00"),
		"bad name":       replace(0, "not-a-name"),
		"zero uid":       replace(2, "0"),
		"negative uid":   replace(2, "-1"),
		"bad connid":     replace(3, "x"),
		"nick control":   replace(1, "a\x00b"),
		"bad key":        with([2]string{"sp ace", "v"}),
		"bad utf8 value": with([2]string{"k", "\xff"}),
		"too many":       hsEncodeEntries(make([][2]string, maxIntroEntries+1)),
	} {
		if _, err := decodeIntro(msg); !errors.Is(err, ErrBadHandshake) {
			t.Errorf("%s: got %v, want ErrBadHandshake", name, err)
		}
	}
}
