package mesh

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// MaxMessageSize is the largest message Send accepts and Receive returns (as Weave: 10 MiB).
const MaxMessageSize = 10 << 20

const (
	frameHeaderSize = 4
	// readChunk bounds how far the receive buffer grows ahead of the bytes that actually
	// arrived, so a peer announcing a huge frame and then stalling costs us little memory.
	readChunk = 64 << 10
	// bigBuffer: buffers above this size are released once messages are small again, so one
	// large message does not pin megabytes per connection for its lifetime.
	bigBuffer = 1 << 20
)

// frameReader reads length-prefixed frames: 4-byte big-endian length, then the body.
type frameReader struct {
	r   io.Reader
	hdr [frameHeaderSize]byte
	buf []byte
}

// next returns the next frame body, valid until the following call. Frames longer than limit
// are refused before any of the body is read.
func (fr *frameReader) next(limit int) ([]byte, error) {
	if _, err := io.ReadFull(fr.r, fr.hdr[:]); err != nil {
		return nil, err
	}
	n64 := uint64(binary.BigEndian.Uint32(fr.hdr[:]))
	if n64 > uint64(limit) {
		return nil, fmt.Errorf("frame of %d bytes, limit %d: %w", n64, limit, ErrMessageTooLarge)
	}
	n := int(n64)
	if cap(fr.buf) > bigBuffer && n <= readChunk {
		fr.buf = nil
	}
	if n <= cap(fr.buf) {
		fr.buf = fr.buf[:n]
		if _, err := io.ReadFull(fr.r, fr.buf); err != nil {
			return nil, unexpectedEOF(err)
		}
		return fr.buf, nil
	}
	// Grow with the data rather than trusting the announced length up front.
	buf := fr.buf[:0]
	for len(buf) < n {
		want := min(n, max(2*len(buf), len(buf)+readChunk))
		if cap(buf) < want {
			nb := make([]byte, len(buf), want)
			copy(nb, buf)
			buf = nb
		}
		got := len(buf)
		buf = buf[:want]
		if _, err := io.ReadFull(fr.r, buf[got:]); err != nil {
			fr.buf = buf[:0]
			return nil, unexpectedEOF(err)
		}
	}
	fr.buf = buf
	return buf, nil
}

// unexpectedEOF turns a clean EOF inside a frame into ErrUnexpectedEOF: the peer closed
// mid-message, which is not an orderly end of stream.
func unexpectedEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// framedConn is an established mesh connection: a stream of messages, each framed as a 4-byte
// big-endian length and a body; when the connection is encrypted the body is sealed with
// ChaCha20-Poly1305 under a per-direction key and a counter nonce (the header is
// authenticated as additional data).
//
// Any error from Send or Receive is final: the connection is unusable afterwards (a partial
// write or read leaves the stream desynchronised, and a failed authentication means an
// attack or corruption) and every later call returns the same error.
type framedConn struct {
	nc        net.Conn
	encrypted bool
	outbound  bool
	counters  *connCounters
	dataKeys  sessionKeys

	sendMu   sync.Mutex
	sendBuf  []byte
	sendHdr  [frameHeaderSize]byte // plaintext path; fields rather than locals so Send does not allocate
	sendVecs [2][]byte
	sendBufs net.Buffers
	sendSeq  *sealer // nil: plaintext
	sendErr  error

	// Receive side: used by one goroutine at a time, no lock.
	fr        frameReader
	recvSeq   *sealer // nil: plaintext
	recvErr   error
	recvLimit int // plaintext limit; lower during the handshake

	closeOnce sync.Once
	closeErr  error
}

func newConn(nc net.Conn, br *bufio.Reader, keys *sessionKeys, counters *connCounters) (*framedConn, error) {
	c := &framedConn{
		nc:        nc,
		counters:  counters,
		fr:        frameReader{r: br},
		recvLimit: MaxMessageSize,
	}
	if keys != nil {
		var err error
		if c.sendSeq, err = newSealer(&keys.streamSend); err != nil {
			return nil, err
		}
		if c.recvSeq, err = newSealer(&keys.streamRecv); err != nil {
			return nil, err
		}
		c.encrypted = true
		c.dataKeys = *keys
		clear(keys.streamSend[:])
		clear(keys.streamRecv[:])
		clear(c.dataKeys.streamSend[:])
		clear(c.dataKeys.streamRecv[:])
	}
	return c, nil
}

// Send writes msg as one message. It is safe for concurrent callers; each message is written
// whole and messages leave in the order the calls took the lock.
func (c *framedConn) Send(msg []byte) error {
	if len(msg) > MaxMessageSize {
		return fmt.Errorf("send %d bytes (max %d): %w", len(msg), MaxMessageSize, ErrMessageTooLarge)
	}
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	if c.sendErr != nil {
		return c.sendErr
	}
	var err error
	if c.sendSeq == nil {
		binary.BigEndian.PutUint32(c.sendHdr[:], uint32(len(msg)))
		// writev: no copy of a large message.
		c.sendVecs = [2][]byte{c.sendHdr[:], msg}
		c.sendBufs = c.sendVecs[:]
		_, err = c.sendBufs.WriteTo(c.nc)
		c.sendVecs = [2][]byte{} // do not keep the caller's message alive
	} else {
		need := frameHeaderSize + len(msg) + sealOverhead
		if cap(c.sendBuf) < need || (cap(c.sendBuf) > bigBuffer && need <= readChunk) {
			c.sendBuf = make([]byte, frameHeaderSize, max(need, 4<<10))
		}
		frame := c.sendBuf[:frameHeaderSize]
		binary.BigEndian.PutUint32(frame, uint32(len(msg)+sealOverhead))
		frame, err = c.sendSeq.seal(frame, frame[:frameHeaderSize], msg)
		if err == nil {
			_, err = c.nc.Write(frame)
		}
	}
	if err != nil {
		c.sendErr = fmt.Errorf("send to %s: %w", c.nc.RemoteAddr(), err)
		return c.sendErr
	}
	return nil
}

// Receive returns the next message. Only one goroutine may call it at a time. The returned
// slice is valid only until the next call to Receive (the buffer is reused): copy what you
// keep. A message that fails authentication (replayed, reordered, forged) returns an error
// wrapping ErrReplayOrForgery, is counted, and closes the connection.
func (c *framedConn) Receive() ([]byte, error) {
	msg, err := c.receive()
	if err != nil {
		// A fatal receive error ends the connection so the peer notices too.
		_ = c.Close()
	}
	return msg, err
}

// receive is Receive without closing on error: the handshake must let its own writes finish
// before it tears the connection down, or the peer would see a reset instead of the reason.
func (c *framedConn) receive() ([]byte, error) {
	if c.recvErr != nil {
		return nil, c.recvErr
	}
	limit := c.recvLimit
	if c.recvSeq != nil {
		limit += sealOverhead
	}
	body, err := c.fr.next(limit)
	if err != nil {
		if errors.Is(err, ErrMessageTooLarge) {
			if c.counters != nil {
				c.counters.MessageTooLarge.Add(1)
			}
		}
		c.recvErr = fmt.Errorf("receive from %s: %w", c.nc.RemoteAddr(), err)
		return nil, c.recvErr
	}
	if c.recvSeq == nil {
		return body, nil
	}
	msg, err := c.recvSeq.open(body[:0], c.fr.hdr[:], body)
	if err != nil {
		if c.counters != nil {
			c.counters.ReplayOrForgery.Add(1)
		}
		c.recvErr = fmt.Errorf("receive from %s: message %d: %w", c.nc.RemoteAddr(), c.recvSeq.seq-1, ErrReplayOrForgery)
		return nil, c.recvErr
	}
	return msg, nil
}

// SetReadDeadline bounds the wait of Receive (heartbeat timeouts are the caller's). A
// deadline that expires is a final error like any other.
func (c *framedConn) SetReadDeadline(t time.Time) error { return c.nc.SetReadDeadline(t) }

// SetWriteDeadline bounds how long Send may block on a peer that stopped reading.
func (c *framedConn) SetWriteDeadline(t time.Time) error { return c.nc.SetWriteDeadline(t) }

// Close closes the underlying connection; blocked Send and Receive calls return. It is
// idempotent: later calls return the first result.
func (c *framedConn) Close() error {
	c.closeOnce.Do(func() { c.closeErr = c.nc.Close() })
	return c.closeErr
}

// RemoteAddr is the peer's address.
func (c *framedConn) RemoteAddr() net.Addr { return c.nc.RemoteAddr() }

// LocalAddr is our address.
func (c *framedConn) LocalAddr() net.Addr { return c.nc.LocalAddr() }

// Outbound reports whether we dialled this connection (handshakeParams.Outbound).
func (c *framedConn) Outbound() bool { return c.outbound }

// Encrypted reports whether messages are sealed (a password was configured on both ends).
func (c *framedConn) Encrypted() bool { return c.encrypted }

// DataKeys returns this connection's data-plane keys (for the sleeve overlay): send is what
// this end seals with and equals the peer's recv. They come from other HKDF labels than the
// stream keys, so they are unrelated to them. ok is false on an unencrypted connection.
func (c *framedConn) DataKeys() (send, recv [KeySize]byte, ok bool) {
	if !c.encrypted {
		return send, recv, false
	}
	return c.dataKeys.dataSend, c.dataKeys.dataRecv, true
}
