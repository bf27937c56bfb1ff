package mesh

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// FuzzHandshakeIntro feeds arbitrary bytes to the intro decoder: it must never panic, anything
// it refuses wraps ErrBadHandshake, and anything it accepts is within the limits and survives
// a round trip through the encoder.
func FuzzHandshakeIntro(f *testing.F) {
	p := hsParams(3, "")
	if err := p.validate(); err != nil {
		f.Fatal(err)
	}
	f.Add(encodeIntro(&p, 42))
	f.Add(hsEncodeEntries([][2]string{{"Name", "::1"}, {"NickName", ""}, {"UID", "1"}, {"ConnID", "0"}}))
	f.Add(hsEncodeEntries([][2]string{{"Name", "::1"}, {"Name", "::2"}}))
	f.Add([]byte{})
	f.Add([]byte{0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		in, err := decodeIntro(b)
		if err != nil {
			if !errors.Is(err, ErrBadHandshake) {
				t.Fatalf("refusal %v does not wrap ErrBadHandshake", err)
			}
			return
		}
		if in.Name == UnknownPeerName || in.UID == 0 || len(in.NickName) > maxNickLen || len(in.Features) > maxFeatures {
			t.Fatalf("accepted an invalid intro: %+v", in)
		}
		q := handshakeParams{Name: in.Name, NickName: in.NickName, UID: in.UID, Features: in.Features}
		if err := q.validate(); err != nil {
			t.Fatalf("accepted intro is not valid as params: %v", err)
		}
		back, err := decodeIntro(encodeIntro(&q, in.ConnID))
		if err != nil || back.Name != in.Name || back.NickName != in.NickName || back.UID != in.UID ||
			back.ConnID != in.ConnID || len(back.Features) != len(in.Features) {
			t.Fatalf("round trip: %+v, %v; want %+v", back, err, in)
		}
		for k, v := range in.Features {
			if back.Features[k] != v {
				t.Fatalf("round trip: feature %q = %q, want %q", k, back.Features[k], v)
			}
		}
	})
}

// FuzzFraming feeds arbitrary bytes to the receive path of a plain and of a sealed connection.
// It must never panic, never hold a buffer beyond the frame limit, and a sealed connection must
// never accept a frame the fuzzer made up (it does not know the key).
func FuzzFraming(f *testing.F) {
	frame := func(body string) []byte {
		return append(binary.BigEndian.AppendUint32(nil, uint32(len(body))), body...)
	}
	f.Add([]byte{})
	f.Add(frame("hello"))
	f.Add(append(frame(""), frame("x")...))
	f.Add([]byte{0x00, 0xa0, 0x00, 0x00, 1, 2, 3})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add(frame(string(make([]byte, 40))))
	f.Fuzz(func(t *testing.T, b []byte) {
		var key sessionKeys
		key.streamRecv[0] = 1
		for _, keys := range []*sessionKeys{nil, &key} {
			nc, peer := net.Pipe()
			var cc connCounters
			k := keys
			if k != nil {
				cp := *k
				k = &cp
			}
			c, err := newConn(nc, bufio.NewReader(bytes.NewReader(b)), k, &cc)
			if err != nil {
				t.Fatal(err)
			}
			limit := MaxMessageSize
			if keys != nil {
				limit += sealOverhead
			}
			for range 1000 {
				msg, err := c.Receive()
				if cap(c.fr.buf) > limit {
					t.Fatalf("receive buffer of %d bytes, limit %d", cap(c.fr.buf), limit)
				}
				if err != nil {
					break
				}
				if keys != nil {
					t.Fatalf("sealed connection accepted a forged frame: %q", msg)
				}
			}
			c.Close()
			peer.Close()
		}
	})
}

// FuzzHandshake runs our side of the handshake against a peer that sends arbitrary bytes
// (and reads whatever we send): it must end, with an error or a valid intro, never a panic.
func FuzzHandshake(f *testing.F) {
	hello := []byte("weave\x03\x03")
	plain := append(append([]byte{}, hello...), make([]byte, keyMsgSize)...)
	p := hsParams(4, "")
	if err := p.validate(); err != nil {
		f.Fatal(err)
	}
	intro := encodeIntro(&p, 7)
	valid := append(binary.BigEndian.AppendUint32(append([]byte{}, plain...), uint32(len(intro))), intro...)
	f.Add(valid, false)
	f.Add(plain, false)
	f.Add(hello, true)
	f.Add(append(append([]byte{}, hello...), 1, 9, 9, 9), true)
	f.Add([]byte("weave\x00\xff"), false)
	// Found by the fuzzer: an oversize intro length with no counters configured.
	f.Add(append(append([]byte{}, plain...), 0xb6, 0x1a, 0x93, 0xe3, 0x87, 0xa7, 0x0e, 0x00), false)
	f.Fuzz(func(t *testing.T, script []byte, withPassword bool) {
		pw := ""
		if withPassword {
			pw = "pw"
		}
		p := hsParams(1, pw)
		p.Timeout = time.Second
		a, b := net.Pipe()
		go func() { _, _ = b.Write(script); _ = b.Close() }()
		go func() { _, _ = io.Copy(io.Discard, b) }()
		c, in, err := handshake(context.Background(), a, p)
		if err == nil {
			defer c.Close()
			if in.Name == UnknownPeerName || in.UID == 0 {
				t.Fatalf("accepted an invalid intro: %+v", in)
			}
			if withPassword {
				t.Fatal("a peer without the key completed an encrypted handshake")
			}
		}
	})
}
