package mesh

import (
	"bytes"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"testing"

	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/crypto/salsa20/salsa"
)

func hsKeyPair(t *testing.T) ephemeralKey {
	t.Helper()
	k, err := newEphemeralKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestDeriveSessionKeysCrosswise(t *testing.T) {
	a, b := hsKeyPair(t), hsKeyPair(t)
	pw := []byte("password")
	ka, err := deriveSessionKeys(a, b.pub, pw)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := deriveSessionKeys(b, a.pub, pw)
	if err != nil {
		t.Fatal(err)
	}
	if ka.streamSend != kb.streamRecv || ka.streamRecv != kb.streamSend ||
		ka.dataSend != kb.dataRecv || ka.dataRecv != kb.dataSend {
		t.Fatal("keys do not match crosswise")
	}
	all := [][KeySize]byte{ka.streamSend, ka.streamRecv, ka.dataSend, ka.dataRecv}
	for i := range all {
		if all[i] == ([KeySize]byte{}) {
			t.Errorf("key %d is zero", i)
		}
		for j := i + 1; j < len(all); j++ {
			if all[i] == all[j] {
				t.Errorf("keys %d and %d are equal", i, j)
			}
		}
	}
	// Another password gives unrelated keys.
	kc, err := deriveSessionKeys(a, b.pub, []byte("passwore"))
	if err != nil {
		t.Fatal(err)
	}
	if kc.streamSend == ka.streamSend || kc.dataSend == ka.dataSend {
		t.Error("keys do not depend on the password")
	}
}

// TestDeriveSessionKeysIndependent recomputes the key schedule with independent code (stdlib
// X25519 and HKDF, HSalsa20 as nacl/box applies it), pinning the wire protocol: a change here
// breaks interoperability with deployed peers.
func TestDeriveSessionKeysIndependent(t *testing.T) {
	a, b := hsKeyPair(t), hsKeyPair(t)
	pw := []byte("pinned")
	got, err := deriveSessionKeys(a, b.pub, pw)
	if err != nil {
		t.Fatal(err)
	}
	priv, err := ecdh.X25519().NewPrivateKey(a.priv[:])
	if err != nil {
		t.Fatal(err)
	}
	pub, err := ecdh.X25519().NewPublicKey(b.pub[:])
	if err != nil {
		t.Fatal(err)
	}
	dh, err := priv.ECDH(pub)
	if err != nil {
		t.Fatal(err)
	}
	var shared, in [32]byte
	copy(in[:], dh)
	salsa.HSalsa20(&shared, &[16]byte{}, &in, &salsa.Sigma)
	lo, hi := a.pub[:], b.pub[:]
	if bytes.Compare(lo, hi) > 0 {
		lo, hi = hi, lo
	}
	salt := append(append([]byte{}, lo...), hi...)
	ikm := append(shared[:], pw...)
	key := func(label string) [KeySize]byte {
		k, err := hkdf.Key(sha256.New, ikm, salt, label, KeySize)
		if err != nil {
			t.Fatal(err)
		}
		return [KeySize]byte(k)
	}
	aIsLo := bytes.Equal(lo, a.pub[:])
	wantSend, wantData := key(labelStreamLoHi), key(labelDataLoHi)
	if !aIsLo {
		wantSend, wantData = key(labelStreamHiLo), key(labelDataHiLo)
	}
	if got.streamSend != wantSend || got.dataSend != wantData {
		t.Fatal("key schedule differs from the independent computation")
	}
}

func TestDeriveSessionKeysRefusesBadPublicKeys(t *testing.T) {
	a := hsKeyPair(t)
	lowOrder := [32]byte{1} // u = 1 has order 4 on Curve25519
	for name, pub := range map[string]*[32]byte{"zero": {}, "own key": a.pub, "low order": &lowOrder} {
		if _, err := deriveSessionKeys(a, pub, []byte("pw")); !errors.Is(err, ErrBadHandshake) {
			t.Errorf("%s: got %v, want ErrBadHandshake", name, err)
		}
	}
}

func TestSealerCounterAndHeader(t *testing.T) {
	var key [KeySize]byte
	key[0] = 9
	tx, _ := newSealer(&key)
	hdr := []byte{0, 0, 0, 1}
	var frames [][]byte
	for _, m := range []string{"a", "b", "c"} {
		f, err := tx.seal(nil, hdr, []byte(m))
		if err != nil {
			t.Fatal(err)
		}
		frames = append(frames, f)
	}
	open := func(rx *sealer, f, h []byte) error { _, err := rx.open(nil, h, f); return err }

	rx, _ := newSealer(&key)
	for i, f := range frames {
		if err := open(rx, f, hdr); err != nil {
			t.Fatalf("in-order frame %d: %v", i, err)
		}
	}
	rx, _ = newSealer(&key)
	if err := open(rx, frames[1], hdr); err == nil {
		t.Error("frame 1 opened as frame 0")
	}
	rx, _ = newSealer(&key)
	if err := open(rx, frames[0], []byte{0, 0, 0, 2}); err == nil {
		t.Error("frame opened under an altered header")
	}
	tx.seq = ^uint64(0)
	if _, err := tx.seal(nil, hdr, nil); !errors.Is(err, errNonceExhausted) {
		t.Errorf("exhausted counter: got %v", err)
	}
}

func TestTranscriptHash(t *testing.T) {
	ha, hb := []byte("weave\x01\x01"), []byte("weave\x01\x02")
	ka, kb := bytes.Repeat([]byte{1}, 33), bytes.Repeat([]byte{2}, 33)
	fromA := transcriptHash(ha, hb, ka, kb, true)
	fromB := transcriptHash(hb, ha, kb, ka, false)
	if fromA != fromB {
		t.Fatal("the two ends compute different transcripts")
	}
	if transcriptHash([]byte("weave\x01\x02"), hb, ka, kb, true) == fromA {
		t.Error("transcript ignores the version range")
	}
}

// TestConnDataKeys checks the data-plane keys on real connections: equal crosswise, different
// per connection, and unable to open what the stream sent (so they are not the stream keys).
func TestConnDataKeys(t *testing.T) {
	var captured []byte
	ca, cb := hsProxied(t, hsParams(1, "pw"), hsParams(2, "pw"), func(i int, f []byte) [][]byte {
		if i == 2 { // first application message: stream nonce 2
			captured = bytes.Clone(f)
		}
		return [][]byte{f}
	})
	go func() { _ = ca.Send([]byte("data-key probe")) }()
	if _, err := cb.Receive(); err != nil {
		t.Fatal(err)
	}
	as, ar, aok := ca.DataKeys()
	bs, br, bok := cb.DataKeys()
	if !aok || !bok {
		t.Fatal("DataKeys not available on an encrypted connection")
	}
	if as != br || ar != bs || as == ar {
		t.Fatal("data keys are not distinct and equal crosswise")
	}
	for _, k := range [][KeySize]byte{as, ar} {
		aead, err := chacha20poly1305.New(k[:])
		if err != nil {
			t.Fatal(err)
		}
		var nonce [chacha20poly1305.NonceSize]byte
		binary.BigEndian.PutUint64(nonce[4:], 2)
		if _, err := aead.Open(nil, nonce[:], captured[4:], captured[:4]); err == nil {
			t.Fatal("a data key opens a stream message")
		}
	}
	c2a, _, _, _ := hsConnected(t, hsParams(1, "pw"), hsParams(2, "pw"))
	if s2, _, _ := c2a.DataKeys(); s2 == as {
		t.Error("two connections share data keys")
	}
}
