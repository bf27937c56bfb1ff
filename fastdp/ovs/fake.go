package ovs

import (
	"errors"
	"io"
	"slices"
	"sync"
)

// FakeLinks is an in-memory KernelLinks for tests without root: it records the devices that
// Uplink and Pair create and DeleteLink removes, the ports isolated, the flushes, and gives
// each OpenPacket a FakePacket.
type FakeLinks struct {
	mu sync.Mutex
	// Bridges are the Linux bridges that exist; Uplink into another one fails.
	Bridges  []string
	devs     map[string]int // name -> mtu
	peers    map[string]string
	deleted  []string
	isolated []string
	flushes  int
	packets  map[string]*FakePacket
}

var _ KernelLinks = (*FakeLinks)(nil)

func (f *FakeLinks) pair(a, b string, mtu int) {
	if f.devs == nil {
		f.devs, f.peers = map[string]int{}, map[string]string{}
	}
	f.devs[a], f.devs[b] = mtu, mtu
	f.peers[a], f.peers[b] = b, a
}

// Uplink records both ends of the pair.
func (f *FakeLinks) Uplink(bridge, ovsEnd, bridgeEnd string, mtu int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !slices.Contains(f.Bridges, bridge) {
		return errors.New("fake: no bridge " + bridge)
	}
	f.pair(ovsEnd, bridgeEnd, mtu)
	return nil
}

// Pair records both ends of the pair.
func (f *FakeLinks) Pair(ovsEnd, hostEnd string, mtu int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pair(ovsEnd, hostEnd, mtu)
	return nil
}

// DeleteLink removes name and its veth peer.
func (f *FakeLinks) DeleteLink(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.deleted = append(f.deleted, name)
	delete(f.devs, name)
	if p, ok := f.peers[name]; ok {
		delete(f.devs, p)
	}
	return nil
}

// Isolate records dev.
func (f *FakeLinks) Isolate(dev string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.isolated = append(f.isolated, dev)
	return nil
}

// FlushLearned counts the call.
func (f *FakeLinks) FlushLearned(bridge string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.flushes++
	return nil
}

// HardwareAddr returns a fixed MAC for a device that exists.
func (f *FakeLinks) HardwareAddr(dev string) ([6]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.devs[dev]; !ok {
		return [6]byte{}, errors.New("fake: no device " + dev)
	}
	return [6]byte{0x02, 0xfa, 0x4e, 0x0b, 0x5e, byte(len(dev))}, nil
}

// OpenPacket returns the FakePacket of dev, which must exist.
func (f *FakeLinks) OpenPacket(dev string) (io.ReadWriteCloser, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.devs[dev]; !ok {
		return nil, errors.New("fake: no device " + dev)
	}
	if f.packets == nil {
		f.packets = map[string]*FakePacket{}
	}
	p := &FakePacket{in: make(chan []byte, 16), done: make(chan struct{})}
	f.packets[dev] = p
	return p, nil
}

// Close does nothing.
func (f *FakeLinks) Close() error { return nil }

// Packet returns the socket OpenPacket gave for dev, or nil.
func (f *FakeLinks) Packet(dev string) *FakePacket {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.packets[dev]
}

// Devices returns the devices that exist, sorted.
func (f *FakeLinks) Devices() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for d := range f.devs {
		out = append(out, d)
	}
	slices.Sort(out)
	return out
}

// Deleted returns the names given to DeleteLink, in order.
func (f *FakeLinks) Deleted() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.deleted)
}

// Isolated returns the names given to Isolate, in order.
func (f *FakeLinks) Isolated() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.isolated)
}

// Flushes counts FlushLearned calls.
func (f *FakeLinks) Flushes() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.flushes
}

// FakePacket is an in-memory packet socket: Write records frames, Read returns injected ones.
type FakePacket struct {
	mu        sync.Mutex
	written   [][]byte
	in        chan []byte
	done      chan struct{}
	closeOnce sync.Once
}

// Write records a copy of frame.
func (p *FakePacket) Write(frame []byte) (int, error) {
	select {
	case <-p.done:
		return 0, errors.New("fake packet socket closed")
	default:
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.written = append(p.written, slices.Clone(frame))
	return len(frame), nil
}

// Read blocks until a frame is injected or the socket is closed.
func (p *FakePacket) Read(buf []byte) (int, error) {
	select {
	case f := <-p.in:
		return copy(buf, f), nil
	case <-p.done:
		return 0, errors.New("fake packet socket closed")
	}
}

// Close unblocks Read; idempotent.
func (p *FakePacket) Close() error {
	p.closeOnce.Do(func() { close(p.done) })
	return nil
}

// Inject hands frame to the next Read, as if it arrived on the device.
func (p *FakePacket) Inject(frame []byte) {
	select {
	case p.in <- slices.Clone(frame):
	case <-p.done:
	}
}

// Written returns the frames written so far.
func (p *FakePacket) Written() [][]byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.written)
}
