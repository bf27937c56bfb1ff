package mesh

// Streams for memberlist's push-pull and fallback probes, carried over the mesh transport.

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

var errStreamClosed = errors.New("mesh stream closed")

// meshStream is a reliable, ordered byte stream between two peers, carried by gossip
// unicasts. Mesh routes keep messages in order; a gap (a route change mid-stream, a dropped
// message) resets the stream, and memberlist retries.
type meshStream struct {
	t   *meshTransport
	key streamKey

	mu       sync.Mutex
	cond     *sync.Cond
	buf      []byte
	err      error // set once closed: reads drain buf, then return err
	recvSeq  uint64
	sendSeq  uint64
	deadline time.Time
	timer    *time.Timer
}

func newMeshStream(t *meshTransport, key streamKey) *meshStream {
	s := &meshStream{t: t, key: key}
	s.cond = sync.NewCond(&s.mu)
	return s
}

func (s *meshStream) header(kind byte) []byte {
	var w wbuf
	w.u8(kind)
	var f byte
	if s.key.dialled {
		f = 1
	}
	w.u8(f)
	w.u64(s.key.id)
	return w.b
}

// deliver appends data in sequence; on a gap or overrun it fails the stream and returns the
// error (the caller then closes it, outside the lock).
func (s *meshStream) deliver(seq uint64, data []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return nil
	}
	if seq != s.recvSeq || len(s.buf)+len(data) > mlStreamBuffer {
		err := fmt.Errorf("mesh stream %d from %s: out of order or overrun (seq %d, want %d)", s.key.id, s.key.peer, seq, s.recvSeq)
		return err
	}
	s.recvSeq++
	s.buf = append(s.buf, data...)
	s.cond.Broadcast()
	return nil
}

func (s *meshStream) Read(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.buf) == 0 && s.err == nil {
		if !s.deadline.IsZero() && !time.Now().Before(s.deadline) {
			return 0, deadlineError{}
		}
		s.cond.Wait()
	}
	if len(s.buf) == 0 {
		return 0, s.err
	}
	n := copy(p, s.buf)
	s.buf = s.buf[n:]
	return n, nil
}

func (s *meshStream) Write(p []byte) (int, error) {
	s.mu.Lock()
	if s.err != nil {
		err := s.err
		s.mu.Unlock()
		if err == io.EOF {
			err = errStreamClosed
		}
		return 0, err
	}
	s.mu.Unlock()
	written := 0
	for len(p) > 0 {
		n := min(len(p), mlChunk)
		s.mu.Lock()
		seq := s.sendSeq
		s.sendSeq++
		s.mu.Unlock()
		var w wbuf
		w.b = s.header(mlStreamData)
		w.u64(seq)
		w.b = append(w.b, p[:n]...)
		if err := s.t.gossip.GossipUnicast(s.key.peer, w.b); err != nil {
			return written, err
		}
		written += n
		p = p[n:]
	}
	return written, nil
}

// closeLocal ends the stream here without telling the peer.
func (s *meshStream) closeLocal(err error) {
	s.mu.Lock()
	if s.err == nil {
		s.err = err
	}
	if s.timer != nil {
		s.timer.Stop()
	}
	s.cond.Broadcast()
	s.mu.Unlock()
	s.t.mu.Lock()
	if s.t.streams[s.key] == s {
		delete(s.t.streams, s.key)
	}
	s.t.mu.Unlock()
}

func (s *meshStream) Close() error {
	s.mu.Lock()
	already := s.err != nil
	s.mu.Unlock()
	if !already {
		s.t.gossip.GossipUnicast(s.key.peer, s.header(mlStreamClose))
	}
	s.closeLocal(errStreamClosed)
	return nil
}

func (s *meshStream) LocalAddr() net.Addr  { return memberlistAddr(s.t.r.cfg.Name) }
func (s *meshStream) RemoteAddr() net.Addr { return memberlistAddr(s.key.peer) }

func (s *meshStream) SetDeadline(t time.Time) error { return s.SetReadDeadline(t) }

// SetWriteDeadline is accepted and ignored: writes never block (they are queued).
func (s *meshStream) SetWriteDeadline(time.Time) error { return nil }

func (s *meshStream) SetReadDeadline(t time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.deadline = t
	if s.timer != nil {
		s.timer.Stop()
		s.timer = nil
	}
	if !t.IsZero() {
		s.timer = time.AfterFunc(time.Until(t), func() {
			s.mu.Lock()
			s.cond.Broadcast()
			s.mu.Unlock()
		})
	}
	s.cond.Broadcast()
	return nil
}

type deadlineError struct{}

func (deadlineError) Error() string   { return "mesh stream read deadline exceeded" }
func (deadlineError) Timeout() bool   { return true }
func (deadlineError) Temporary() bool { return true }
