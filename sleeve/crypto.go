package sleeve

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/crypto/nacl/secretbox"

	"github.com/weavemesh/weave/mesh"
)

// Cipher names, as offered in the "ciphers" handshake feature (most preferred first).
const (
	CipherAESGCM    = "aes-gcm"
	CipherSecretbox = "secretbox"
	cipherNone      = "none"
)

var (
	errReplay = errors.New("replayed or too old")
	errAuth   = errors.New("authentication failed")
)

// sealer encrypts one direction of a connection. It belongs to the neighbour's sender
// goroutine, which also owns the sequence counter, so it needs no lock.
type sealer struct {
	name mesh.PeerName // ours: the sender field of every datagram
	aead cipher.AEAD   // nil: secretbox
	key  [32]byte
	seq  uint64
	// nonce is scratch: a local array passed to cipher.AEAD would escape to the heap.
	nonce [12]byte
}

// opener decrypts the other direction; it belongs to the socket reader.
type opener struct {
	aead   cipher.AEAD
	key    [32]byte
	window replayWindow
	nonce  [12]byte // scratch, see sealer.nonce
}

func newAEAD(name string, key *[32]byte) (cipher.AEAD, error) {
	if name != CipherAESGCM {
		return nil, nil
	}
	blk, err := aes.NewCipher(key[:])
	if err != nil {
		return nil, fmt.Errorf("aes: %w", err)
	}
	g, err := cipher.NewGCM(blk)
	if err != nil {
		return nil, fmt.Errorf("gcm: %w", err)
	}
	return g, nil
}

// seal writes the sealed datagram for body into out and returns it. body must sit at
// out[sealedHeaderLen:] (AES-GCM seals in place) or not overlap out at all (secretbox).
// Nonces are the 64-bit sequence number, never reused: each connection has fresh keys.
func (s *sealer) seal(out, body []byte) []byte {
	s.seq++
	putName(out[0:6], s.name)
	binary.BigEndian.PutUint64(out[6:14], s.seq)
	if s.aead != nil {
		binary.BigEndian.PutUint64(s.nonce[4:], s.seq)
		sealed := s.aead.Seal(out[sealedHeaderLen:sealedHeaderLen], s.nonce[:], body, out[:sealedHeaderLen])
		return out[:sealedHeaderLen+len(sealed)]
	}
	var nonce [24]byte
	binary.BigEndian.PutUint64(nonce[16:], s.seq)
	sealed := secretbox.Seal(out[sealedHeaderLen:sealedHeaderLen], body, &nonce, &s.key)
	return out[:sealedHeaderLen+len(sealed)]
}

// open authenticates and decrypts datagram d (header included). AES-GCM decrypts in place
// and scratch is unused; secretbox writes into scratch. The replay window only moves once
// the datagram proved authentic, so forgeries cannot push it.
func (o *opener) open(scratch, d []byte) ([]byte, error) {
	if len(d) < sealedHeaderLen+tagLen {
		return nil, fmt.Errorf("sealed datagram of %d bytes: %w", len(d), errMalformed)
	}
	seq := binary.BigEndian.Uint64(d[6:14])
	if !o.window.check(seq) {
		return nil, fmt.Errorf("sequence %d: %w", seq, errReplay)
	}
	var body []byte
	var ok bool
	if o.aead != nil {
		binary.BigEndian.PutUint64(o.nonce[4:], seq)
		var err error
		body, err = o.aead.Open(d[sealedHeaderLen:sealedHeaderLen], o.nonce[:], d[sealedHeaderLen:], d[:sealedHeaderLen])
		ok = err == nil
	} else {
		var nonce [24]byte
		binary.BigEndian.PutUint64(nonce[16:], seq)
		body, ok = secretbox.Open(scratch[:0], d[sealedHeaderLen:], &nonce, &o.key)
	}
	if !ok {
		return nil, fmt.Errorf("sequence %d: %w", seq, errAuth)
	}
	o.window.update(seq)
	return body, nil
}

// windowBits is how far behind the newest sequence number a datagram may arrive: one sender
// goroutine per peer keeps order on the wire, so only the network reorders.
const windowBits = 8192

// replayWindow is a sliding bitmap of recently seen sequence numbers (RFC 6479 style).
type replayWindow struct {
	last uint64 // highest sequence accepted; 0: none yet
	bits [windowBits / 64]uint64
}

// check reports whether seq is new and recent enough; it changes nothing.
func (w *replayWindow) check(seq uint64) bool {
	if seq == 0 {
		return false
	}
	if seq > w.last {
		return true
	}
	if w.last-seq >= windowBits-64 { // the head's word is shared with the oldest: keep it out
		return false
	}
	return w.bits[(seq/64)%uint64(len(w.bits))]&(1<<(seq%64)) == 0
}

// update marks seq as seen; call only after check and authentication.
func (w *replayWindow) update(seq uint64) {
	if seq > w.last {
		// Clear the words between the old and the new head.
		oldWord, newWord := w.last/64, seq/64
		if newWord-oldWord >= uint64(len(w.bits)) {
			clear(w.bits[:])
		} else {
			for i := oldWord + 1; i <= newWord; i++ {
				w.bits[i%uint64(len(w.bits))] = 0
			}
		}
		w.last = seq
	}
	w.bits[(seq/64)%uint64(len(w.bits))] |= 1 << (seq % 64)
}
