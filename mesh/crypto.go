package mesh

// Connection crypto. Weave derived one key as SHA256(secret||password) and used it for both
// directions and for the data plane, with nonce polarity bits keeping the streams apart. Here
// every direction and every use gets its own key from HKDF, so a nonce can never repeat under
// one key even if both ends count from zero, and a leak of the data-plane keys (which the
// sleeve keeps in memory for its workers) says nothing about the control-plane keys.

import (
	"bytes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"

	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/crypto/curve25519"
	"golang.org/x/crypto/hkdf"
	"golang.org/x/crypto/nacl/box"
)

// KeySize is the size of every session key, including those DataKeys returns.
const KeySize = 32

// sealOverhead is what sealing adds to a message (the Poly1305 tag).
const sealOverhead = chacha20poly1305.Overhead

// HKDF info labels: one per direction and per use. "lo" is the side whose ephemeral public key
// sorts first; the order is a property of the key pair, so both ends agree without trusting
// the Outbound flag of either (a reflected or crossed connection could make both claim it).
const (
	labelStreamLoHi = "weave-mesh v1 stream lo->hi"
	labelStreamHiLo = "weave-mesh v1 stream hi->lo"
	labelDataLoHi   = "weave-mesh v1 data lo->hi"
	labelDataHiLo   = "weave-mesh v1 data hi->lo"
	transcriptLabel = "weave-mesh v1 transcript"
)

var errNonceExhausted = errors.New("nonce counter exhausted")

// ephemeralKey is one side's per-connection key pair.
type ephemeralKey struct {
	pub, priv *[32]byte
}

func newEphemeralKey(rnd io.Reader) (ephemeralKey, error) {
	pub, priv, err := box.GenerateKey(rnd)
	if err != nil {
		return ephemeralKey{}, fmt.Errorf("generate ephemeral key: %w", err)
	}
	return ephemeralKey{pub: pub, priv: priv}, nil
}

// sessionKeys are everything one end derives from a handshake, already oriented: send is what
// this end seals with, recv what it opens with.
type sessionKeys struct {
	streamSend, streamRecv [KeySize]byte
	dataSend, dataRecv     [KeySize]byte
}

// deriveSessionKeys runs the key schedule. The password enters the HKDF input keying material
// next to the X25519 secret, so a peer without it derives unrelated keys and the first sealed
// message (the confirmation) fails to open; the password itself never travels.
func deriveSessionKeys(our ephemeralKey, theirPub *[32]byte, password []byte) (sessionKeys, error) {
	var keys sessionKeys
	if *theirPub == [32]byte{} {
		return keys, fmt.Errorf("%w: all-zero public key", ErrBadHandshake)
	}
	if *theirPub == *our.pub {
		// Our own key coming back means the stream is reflected: refusing here stops an
		// attacker from replaying our messages to us under the same keys.
		return keys, fmt.Errorf("%w: peer echoed our public key", ErrBadHandshake)
	}
	// box.Precompute does not reject low-order points; X25519 does (all-zero output), and a
	// contributory exchange is what keeps the session keys fresh even when the password is
	// weak, so check it explicitly.
	if _, err := curve25519.X25519(our.priv[:], theirPub[:]); err != nil {
		return keys, fmt.Errorf("%w: bad public key: %w", ErrBadHandshake, err)
	}
	var shared [32]byte
	box.Precompute(&shared, theirPub, our.priv)
	defer clear(shared[:])

	lo, hi := our.pub, theirPub
	weAreLo := bytes.Compare(our.pub[:], theirPub[:]) < 0
	if !weAreLo {
		lo, hi = theirPub, our.pub
	}
	salt := make([]byte, 0, 64)
	salt = append(salt, lo[:]...)
	salt = append(salt, hi[:]...)
	ikm := make([]byte, 0, len(shared)+len(password))
	ikm = append(ikm, shared[:]...)
	ikm = append(ikm, password...)
	defer clear(ikm)
	prk := hkdf.Extract(sha256.New, ikm, salt)
	defer clear(prk)

	expand := func(dst *[KeySize]byte, label string) error {
		if _, err := io.ReadFull(hkdf.Expand(sha256.New, prk, []byte(label)), dst[:]); err != nil {
			return fmt.Errorf("derive %s: %w", label, err)
		}
		return nil
	}
	sendStream, recvStream, sendData, recvData := labelStreamLoHi, labelStreamHiLo, labelDataLoHi, labelDataHiLo
	if !weAreLo {
		sendStream, recvStream, sendData, recvData = recvStream, sendStream, recvData, sendData
	}
	for _, k := range []struct {
		dst   *[KeySize]byte
		label string
	}{
		{&keys.streamSend, sendStream}, {&keys.streamRecv, recvStream},
		{&keys.dataSend, sendData}, {&keys.dataRecv, recvData},
	} {
		if err := expand(k.dst, k.label); err != nil {
			return sessionKeys{}, err
		}
	}
	return keys, nil
}

// transcriptHash binds everything exchanged in the clear (version ranges, encryption flags,
// public keys). Each side seals it as its first message, so a peer with a different password
// fails to open it (reported as a wrong password rather than as a corrupt stream), and a
// man in the middle who rewrote a version range or flag is caught even though the keys alone
// would not cover those bytes. The two sides' bytes are ordered by public key, as in the salt.
func transcriptHash(ourHello, theirHello, ourKeyMsg, theirKeyMsg []byte, weAreLo bool) [32]byte {
	h := sha256.New()
	h.Write([]byte(transcriptLabel))
	first, second := [2][]byte{ourHello, ourKeyMsg}, [2][]byte{theirHello, theirKeyMsg}
	if !weAreLo {
		first, second = second, first
	}
	for _, part := range [][]byte{first[0], first[1], second[0], second[1]} {
		var l [4]byte
		binary.BigEndian.PutUint32(l[:], uint32(len(part)))
		h.Write(l[:])
		h.Write(part)
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// sealer seals one direction of a stream. The nonce is the message counter, so the receiver,
// counting on its own, can only open messages in the order they were sealed: a dropped,
// replayed or reordered message fails authentication.
type sealer struct {
	aead  cipher.AEAD
	seq   uint64
	nonce [chacha20poly1305.NonceSize]byte // kept here so sealing does not allocate
}

func newSealer(key *[KeySize]byte) (*sealer, error) {
	aead, err := chacha20poly1305.New(key[:])
	if err != nil {
		return nil, fmt.Errorf("new aead: %w", err)
	}
	return &sealer{aead: aead}, nil
}

// next sets s.nonce to the next counter value.
func (s *sealer) next() error {
	if s.seq == math.MaxUint64 {
		return errNonceExhausted
	}
	binary.BigEndian.PutUint64(s.nonce[4:], s.seq)
	s.seq++
	return nil
}

// seal appends the sealed msg to dst; ad (the frame header) is authenticated too, so the
// length cannot be altered without detection.
func (s *sealer) seal(dst, ad, msg []byte) ([]byte, error) {
	if err := s.next(); err != nil {
		return nil, err
	}
	return s.aead.Seal(dst, s.nonce[:], msg, ad), nil
}

// open is the receiving half; it uses the same counter discipline.
func (s *sealer) open(dst, ad, sealed []byte) ([]byte, error) {
	if err := s.next(); err != nil {
		return nil, err
	}
	return s.aead.Open(dst, s.nonce[:], sealed, ad)
}

// randomUint64 returns a random non-zero value (connection IDs).
func randomUint64(rnd io.Reader) (uint64, error) {
	var b [8]byte
	for {
		if _, err := io.ReadFull(rnd, b[:]); err != nil {
			return 0, fmt.Errorf("random: %w", err)
		}
		if v := binary.BigEndian.Uint64(b[:]); v != 0 {
			return v, nil
		}
	}
}
