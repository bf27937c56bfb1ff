package mesh

// The connection handshake. Wire format, each step written by both ends at once (so neither
// waits for the other to speak first) and read in full before anything is judged (so both ends
// report the same reason, instead of one seeing a reset):
//
//	1. hello:    "weave" minVersion maxVersion                       (7 bytes)
//	2. key:      flag (0 plain, 1 encrypted) + 32-byte X25519 key    (33 bytes; zeros if plain)
//	3. confirm:  framed, sealed transcript hash                      (encrypted only)
//	4. intro:    framed (sealed if encrypted) key/value message:
//	             count u8, then per entry: keyLen u8, key, valueLen u16 BE, value
//	             with the reserved keys Name, NickName, UID, ConnID and the caller's Features.
//
// After that the connection carries framed messages (see framedConn).

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

// Protocol version range this build speaks. It starts at 3 because the greeting is Weave
// Net's ("weave" + min + max) and Weave spoke 1..2: a Weave router met during a migration then
// fails the negotiation with a clear version error instead of misparsing our handshake.
const (
	ProtocolMinVersion byte = 3
	ProtocolMaxVersion byte = 3
)

// defaultHandshakeTimeout bounds a handshake when handshakeParams.Timeout is zero (as Weave).
const defaultHandshakeTimeout = 10 * time.Second

const (
	protocolMagic = "weave"
	helloSize     = len(protocolMagic) + 2
	keyMsgSize    = 1 + 32
	flagPlain     = 0
	flagEncrypted = 1
)

// Errors callers branch on; returned wrapped with the peer's address and the details.
var (
	// ErrWrongPassword: the peer's confirmation did not open, so its password differs from ours.
	ErrWrongPassword = errors.New("authentication failed: wrong password?")
	// ErrPasswordMismatch: one end has a password and the other has none.
	ErrPasswordMismatch = errors.New("password mismatch")
	// ErrVersionMismatch: the protocol version ranges do not overlap.
	ErrVersionMismatch = errors.New("protocol version mismatch")
	// ErrMessageTooLarge: a message or frame exceeds the limit.
	ErrMessageTooLarge = errors.New("message too large")
	// ErrReplayOrForgery: a sealed message failed to open after the handshake (replayed,
	// reordered, dropped or altered on the way).
	ErrReplayOrForgery = errors.New("message failed authentication: replayed, reordered or forged")
	// ErrBadHandshake: the peer sent something malformed during the handshake.
	ErrBadHandshake = errors.New("malformed handshake")
	// ErrHandshakeTimeout: the handshake did not finish within its deadline.
	ErrHandshakeTimeout = errors.New("handshake timed out")
	// errBadGreeting: the first bytes are not a weave greeting (a port scanner, another
	// protocol): counted apart from a weave peer that sent something malformed later.
	errBadGreeting = fmt.Errorf("%w: not a weave peer", ErrBadHandshake)
)

// handshakeParams describes our end of a connection.
type handshakeParams struct {
	Name                   PeerName // our identity; must be non-zero
	NickName               string
	UID                    uint64 // must be non-zero
	Password               []byte // nil/empty: no encryption
	MinVersion, MaxVersion byte   // zero: ProtocolMinVersion/ProtocolMaxVersion
	// Features are extra key/values for the peer (e.g. "overlays": "fastdp sleeve"). Keys are
	// 1-64 printable ASCII characters and may not be one of the reserved intro keys (Name,
	// NickName, UID, ConnID); values are UTF-8, at most 1024 bytes; at most 32 entries.
	Features map[string]string
	// Outbound: we dialled. Recorded (framedConn.Outbound) for the caller; it never orients
	// the keys, which follow the public keys, because both ends of a crossed or forged
	// connection could claim it.
	Outbound bool
	Timeout  time.Duration // whole-handshake deadline; zero: defaultHandshakeTimeout
	Counters *connCounters // optional: failures are counted here
	// Rand is the randomness source for ephemeral keys and the connection ID; nil: crypto/rand.
	Rand io.Reader
}

// remoteIntro is what the peer told us about itself, validated.
type remoteIntro struct {
	Name     PeerName
	NickName string
	UID      uint64
	ConnID   uint64 // our random ID XOR theirs: the same on both ends
	Version  byte   // negotiated protocol version
	Features map[string]string
	// Encrypted: both ends have a password and the connection is sealed.
	Encrypted bool
}

// handshake runs the connection handshake on c (freshly dialled or accepted) and returns the
// framed connection and the validated peer introduction. It takes ownership of c: on error c is
// closed. Errors wrap one of the sentinels above when the reason is known, and are counted in
// p.Counters. It does not judge the peer's identity (connection to self, name collisions):
// that is the caller's, using the returned remoteIntro. It also ends, closing c, when ctx is
// done; the error then wraps ctx's cause and is not counted as a failure of the peer.
func handshake(ctx context.Context, c net.Conn, p handshakeParams) (*framedConn, remoteIntro, error) {
	conn, intro, err := handshakeDeadline(ctx, c, p)
	if err != nil {
		_ = c.Close()
		if ctx.Err() != nil {
			err = fmt.Errorf("handshake cancelled: %w (%w)", context.Cause(ctx), err)
		} else {
			p.Counters.count(err)
		}
		return nil, remoteIntro{}, fmt.Errorf("handshake with %s: %w", c.RemoteAddr(), err)
	}
	return conn, intro, nil
}

func (p *handshakeParams) validate() error {
	if p.Name == UnknownPeerName || uint64(p.Name)>>peerNameBits != 0 {
		return fmt.Errorf("invalid handshake params: bad peer name %#x", uint64(p.Name))
	}
	if p.UID == 0 {
		return errors.New("invalid handshake params: zero UID")
	}
	if err := checkNickName(p.NickName); err != nil {
		return fmt.Errorf("invalid handshake params: %w", err)
	}
	if p.MinVersion == 0 {
		p.MinVersion = ProtocolMinVersion
	}
	if p.MaxVersion == 0 {
		p.MaxVersion = ProtocolMaxVersion
	}
	if p.MinVersion > p.MaxVersion || p.MinVersion < ProtocolMinVersion || p.MaxVersion > ProtocolMaxVersion {
		return fmt.Errorf("invalid handshake params: version range [%d,%d] outside supported [%d,%d]",
			p.MinVersion, p.MaxVersion, ProtocolMinVersion, ProtocolMaxVersion)
	}
	if len(p.Features) > maxFeatures {
		return fmt.Errorf("invalid handshake params: %d features, max %d", len(p.Features), maxFeatures)
	}
	for k, v := range p.Features {
		if isReservedIntroKey(k) {
			return fmt.Errorf("invalid handshake params: feature key %q is reserved", k)
		}
		if err := checkFeature(k, v); err != nil {
			return fmt.Errorf("invalid handshake params: %w", err)
		}
	}
	if p.Timeout <= 0 {
		p.Timeout = defaultHandshakeTimeout
	}
	if p.Rand == nil {
		p.Rand = rand.Reader
	}
	return nil
}

// handshakeDeadline is handshake bounded by p.Timeout and ctx, leaving the closing and the
// counting to handshake.
func handshakeDeadline(ctx context.Context, nc net.Conn, p handshakeParams) (*framedConn, remoteIntro, error) {
	if err := p.validate(); err != nil {
		return nil, remoteIntro{}, err
	}
	if err := ctx.Err(); err != nil {
		return nil, remoteIntro{}, err
	}
	if err := nc.SetDeadline(time.Now().Add(p.Timeout)); err != nil {
		return nil, remoteIntro{}, fmt.Errorf("set deadline: %w", err)
	}
	// Cancellation moves the deadline into the past: every blocked read and write returns.
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(fired)
		_ = nc.SetDeadline(time.Unix(1, 0))
	})
	conn, intro, err := runHandshake(nc, &p)
	if !stop() {
		<-fired // the deadline may have hit an established conn: it is unusable
		if err == nil {
			err = ctx.Err()
		}
	}
	if err != nil {
		if ctx.Err() == nil && errors.Is(err, os.ErrDeadlineExceeded) {
			err = fmt.Errorf("%w after %v: %w", ErrHandshakeTimeout, p.Timeout, err)
		}
		return nil, remoteIntro{}, err
	}
	if err := nc.SetDeadline(time.Time{}); err != nil {
		return nil, remoteIntro{}, fmt.Errorf("clear deadline: %w", err)
	}
	return conn, intro, nil
}

func runHandshake(nc net.Conn, p *handshakeParams) (*framedConn, remoteIntro, error) {
	br := bufio.NewReaderSize(nc, 32<<10)
	encrypted := len(p.Password) > 0

	// 1. Version ranges.
	ourHello := append([]byte(protocolMagic), p.MinVersion, p.MaxVersion)
	theirHello := make([]byte, helloSize)
	if err := exchange(
		func() error { _, err := nc.Write(ourHello); return err },
		func() error { _, err := io.ReadFull(br, theirHello); return err },
	); err != nil {
		return nil, remoteIntro{}, fmt.Errorf("exchange versions: %w", err)
	}
	version, err := negotiateVersion(p.MinVersion, p.MaxVersion, theirHello)
	if err != nil {
		return nil, remoteIntro{}, err
	}

	// 2. Encryption flag and ephemeral public key.
	var ourKey ephemeralKey
	ourKeyMsg := make([]byte, keyMsgSize)
	if encrypted {
		if ourKey, err = newEphemeralKey(p.Rand); err != nil {
			return nil, remoteIntro{}, err
		}
		ourKeyMsg[0] = flagEncrypted
		copy(ourKeyMsg[1:], ourKey.pub[:])
	}
	theirKeyMsg := make([]byte, keyMsgSize)
	if err := exchange(
		func() error { _, err := nc.Write(ourKeyMsg); return err },
		func() error { _, err := io.ReadFull(br, theirKeyMsg); return err },
	); err != nil {
		return nil, remoteIntro{}, fmt.Errorf("exchange keys: %w", err)
	}
	switch theirKeyMsg[0] {
	case flagPlain:
		if encrypted {
			return nil, remoteIntro{}, fmt.Errorf("password configured here but peer requested an unencrypted connection: %w", ErrPasswordMismatch)
		}
	case flagEncrypted:
		if !encrypted {
			return nil, remoteIntro{}, fmt.Errorf("peer %s requires a password but none is configured here: %w", nc.RemoteAddr(), ErrPasswordMismatch)
		}
	default:
		return nil, remoteIntro{}, fmt.Errorf("%w: encryption flag %d", ErrBadHandshake, theirKeyMsg[0])
	}

	var conn *framedConn
	if encrypted {
		theirPub := (*[32]byte)(theirKeyMsg[1:])
		keys, err := deriveSessionKeys(ourKey, theirPub, p.Password)
		clear(ourKey.priv[:])
		if err != nil {
			return nil, remoteIntro{}, err
		}
		if conn, err = newConn(nc, br, &keys, nil); err != nil {
			return nil, remoteIntro{}, err
		}
		// 3. Key confirmation: the first sealed message in each direction.
		weAreLo := bytes.Compare(ourKey.pub[:], theirPub[:]) < 0
		transcript := transcriptHash(ourHello, theirHello, ourKeyMsg, theirKeyMsg, weAreLo)
		conn.recvLimit = len(transcript)
		var confirm []byte
		if err := exchange(
			func() error { return conn.Send(transcript[:]) },
			func() (err error) { confirm, err = conn.receive(); return err },
		); err != nil {
			if errors.Is(err, ErrReplayOrForgery) {
				return nil, remoteIntro{}, ErrWrongPassword
			}
			return nil, remoteIntro{}, fmt.Errorf("exchange key confirmation: %w", err)
		}
		if subtle.ConstantTimeCompare(confirm, transcript[:]) != 1 {
			// Opened with the right keys but over different cleartext: someone rewrote the
			// version or key messages on the way.
			return nil, remoteIntro{}, fmt.Errorf("%w: transcript mismatch (handshake altered in transit)", ErrBadHandshake)
		}
	} else if conn, err = newConn(nc, br, nil, nil); err != nil {
		return nil, remoteIntro{}, err
	}

	// 4. Introductions.
	ourConnID, err := randomUint64(p.Rand)
	if err != nil {
		return nil, remoteIntro{}, err
	}
	ourIntro := encodeIntro(p, ourConnID)
	conn.recvLimit = maxIntroSize
	var theirIntroMsg []byte
	if err := exchange(
		func() error { return conn.Send(ourIntro) },
		func() (err error) { theirIntroMsg, err = conn.receive(); return err },
	); err != nil {
		if errors.Is(err, ErrMessageTooLarge) {
			return nil, remoteIntro{}, fmt.Errorf("%w: intro: %w", ErrBadHandshake, err)
		}
		return nil, remoteIntro{}, fmt.Errorf("exchange intro: %w", err)
	}
	intro, err := decodeIntro(theirIntroMsg)
	if err != nil {
		return nil, remoteIntro{}, err
	}
	intro.ConnID ^= ourConnID
	intro.Version = version
	intro.Encrypted = encrypted
	conn.recvLimit = MaxMessageSize
	conn.outbound = p.Outbound
	// Counted from here on: a failure during the handshake is counted once, by its reason.
	conn.counters = p.Counters
	return conn, intro, nil
}

// exchange runs write and read at once and waits for both. Waiting for our write even when the
// read failed matters: the peer is reading our half right now, and if we closed early it would
// see a reset instead of the message that tells it what went wrong.
func exchange(write, read func() error) error {
	werr := make(chan error, 1)
	go func() { werr <- write() }()
	rerr := read()
	if err := <-werr; rerr == nil && err != nil {
		return err
	}
	return rerr
}

func negotiateVersion(ourMin, ourMax byte, theirHello []byte) (byte, error) {
	if string(theirHello[:len(protocolMagic)]) != protocolMagic {
		return 0, fmt.Errorf("%w (greeting %q)", errBadGreeting, theirHello)
	}
	theirMin, theirMax := theirHello[len(protocolMagic)], theirHello[len(protocolMagic)+1]
	if theirMin > theirMax || theirMin == 0 {
		return 0, fmt.Errorf("%w: version range [%d,%d]", ErrBadHandshake, theirMin, theirMax)
	}
	v := min(ourMax, theirMax)
	if max(ourMin, theirMin) > v {
		return 0, fmt.Errorf("%w: ours [%d,%d], peer's [%d,%d]", ErrVersionMismatch, ourMin, ourMax, theirMin, theirMax)
	}
	return v, nil
}
