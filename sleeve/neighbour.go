package sleeve

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weavemesh/weave/mesh"
)

// A neighbour is our end of the sleeve with one peer over one mesh connection. Its fields
// are grouped by concern, each group saying who may touch it (as wireguard-go's Device).
type neighbour struct {
	// Immutable.
	s      *Sleeve
	name   mesh.PeerName
	connID uint64
	info   mesh.ConnInfo

	// The sleeve hellos over the mesh connection. Under s.mu until ready; immutable afterwards.
	handshake struct {
		helloSent, helloRecv bool
		theyTrust            bool // the peer says it is in a trusted subnet
		ready                bool // routineSend runs
	}

	// How datagrams are protected (setupCrypto, before ready).
	crypto struct {
		cipher string // "" when unsealed; immutable once ready
		seal   sealer // the holder of send only (the sequence counter)
		open   opener // the socket reader only
	}

	// What heartbeats and probes learned about the UDP path; atomics, read by anyone.
	path struct {
		ep          atomic.Pointer[netip.AddrPort]
		maxPayload  atomic.Int32 // verified UDP payload limit; 0 until verified
		established atomic.Bool
		problem     atomic.Value // string: why the data path cannot start (no common cipher)
		heardFrom   atomic.Bool
		theyHeardUs atomic.Bool
		lastHeard   atomic.Int64
	}

	// Super-frames sent and received in pieces (gso.go).
	gso struct {
		on  bool     // the peer takes super-frames in pieces, and we send them so; immutable
		asm assembly // the super-frames being put together; the socket reader's
		// Super-frames from the peer put together and lost (the reader counts, heartbeats
		// report them), and until when we send none because the peer reported losses.
		asmDone, asmLost atomic.Uint32
		offUntil         atomic.Int64
		id               atomic.Uint32 // numbers our super-frames to the peer
		loss             gsoLossState  // the socket reader's
	}

	// Batches waiting for routineSend, in order, and the pool they come from.
	queue struct {
		batches chan *batch
		signal  chan struct{} // something was queued
		free    chan *batch
	}

	// What the socket reader hands routineSend.
	events struct {
		acks       chan uint16   // peer's probes to acknowledge
		probeAcked chan uint16   // acks of our probes
		kick       chan struct{} // heartbeat state changed: tick now
		reprobe    chan struct{} // verify the path MTU now (the peer reported heavy losses)
	}

	done     chan struct{} // closed by stop: routineSend returns
	stopOnce sync.Once

	// The sending side: whoever holds the lock seals (crypto.seal) and sends; see send.go.
	send struct {
		sync.Mutex
		out     [][]byte // datagrams of the batch being sent
		sbOut   [][]byte // secretbox output buffers
		ctl     []byte   // control datagram scratch
		ctlOut  [][]byte
		probe   probeState
		lastMTU time.Time
		// sentData: data datagrams went out since the last heartbeat (checkPMTU).
		sentData bool
	}
}

func newNeighbour(s *Sleeve, ci mesh.ConnInfo) *neighbour {
	probeTimer := time.NewTimer(time.Hour)
	probeTimer.Stop()
	n := &neighbour{s: s, name: ci.Peer, connID: ci.ConnID, info: ci, done: make(chan struct{})}
	n.gso.on = !s.cfg.DisableGSO && ci.Features[FeatureGSO] == "1"
	n.queue.batches = make(chan *batch, queueLen)
	n.queue.signal = make(chan struct{}, 1)
	n.queue.free = make(chan *batch, queueLen+2)
	n.events.acks = make(chan uint16, 8)
	n.events.probeAcked = make(chan uint16, 8)
	n.events.kick = make(chan struct{}, 1)
	n.events.reprobe = make(chan struct{}, 1)
	n.send.out = make([][]byte, batchDatagrams)
	n.send.ctlOut = make([][]byte, 1)
	n.send.probe = probeState{timer: probeTimer}
	return n
}

func (n *neighbour) stop() { n.stopOnce.Do(func() { close(n.done) }) }

// waiting says why n is not established, for status.
func (n *neighbour) waiting() string {
	if p, _ := n.path.problem.Load().(string); p != "" {
		return p
	}
	port := "the sleeve's UDP port"
	if ep := n.path.ep.Load(); ep != nil {
		port = fmt.Sprintf("UDP %d", ep.Port())
	}
	switch {
	case !n.path.heardFrom.Load():
		return "no heartbeats from the peer over " + port + " (blocked?)"
	case !n.path.theyHeardUs.Load():
		return "the peer does not hear our heartbeats over " + port + " (blocked one way?)"
	default:
		return "verifying the path MTU"
	}
}

// setupCrypto picks how datagrams with this neighbour are protected: no keys (no password)
// or both ends in a trusted subnet: unsealed; otherwise the first of our ciphers the peer
// offers. No common cipher means no data path, never plaintext.
func (n *neighbour) setupCrypto(ours []string) error {
	if !n.info.HasKeys || (n.info.Trusted && n.handshake.theyTrust) {
		return nil
	}
	theirs := strings.Fields(n.info.Features[FeatureCiphers])
	for _, c := range ours {
		for _, t := range theirs {
			if c != t {
				continue
			}
			aeadOut, err := newAEAD(c, &n.info.SendKey)
			if err != nil {
				return err
			}
			aeadIn, err := newAEAD(c, &n.info.RecvKey)
			if err != nil {
				return err
			}
			n.crypto.cipher = c
			n.crypto.seal = sealer{name: n.s.cfg.Name, aead: aeadOut, key: n.info.SendKey}
			n.crypto.open = opener{aead: aeadIn, key: n.info.RecvKey}
			return nil
		}
	}
	return errors.New("no common cipher: we offer " + strings.Join(ours, ",") + ", peer offers " +
		strings.Join(theirs, ","))
}

func (n *neighbour) sealed() bool { return n.crypto.cipher != "" }

func (n *neighbour) headerLen() int {
	if n.sealed() {
		return sealedHeaderLen + tagLen
	}
	return plainHeaderLen
}

func (n *neighbour) ipOverhead() int {
	if ep := n.path.ep.Load(); ep != nil && !ep.Addr().Is4() {
		return udpIPv6Overhead
	}
	return udpIPv4Overhead
}

// bodyLimit is the largest datagram body (records) that fits the verified path.
func (n *neighbour) bodyLimit() int {
	mp := int(n.path.maxPayload.Load())
	if mp == 0 {
		return 0
	}
	return mp - n.headerLen()
}

// maxFrame is the largest Ethernet frame one record can carry.
func (n *neighbour) maxFrame() int {
	if l := n.bodyLimit(); l > recordHeaderLen {
		return l - recordHeaderLen
	}
	return 0
}

func (n *neighbour) cipherName() string {
	if n.crypto.cipher == "" {
		return cipherNone
	}
	return n.crypto.cipher
}
