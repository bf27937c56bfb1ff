package tap

// The Linux TAP devices. Both paths end in the same device type reading and writing a
// non-blocking fd through the Go poller (syscall.RawConn), so that a Read can drain several
// ready frames with one wake-up and neither path allocates per frame:
//
//   - offload path: /dev/net/tun opened here with IFF_VNET_HDR and TUNSETOFFLOAD(CSUM|TSO4|
//     TSO6), every frame prefixed by a virtio-net header, super-frames segmented on Read and
//     segments coalesced on Write (offload.go, coalesce.go);
//   - plain path: opened through github.com/songgao/water, whose fd is taken over (it is
//     non-blocking, and we mark it close-on-exec, which water forgets: a leaked fd in a child
//     process would keep the interface alive).

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/songgao/water"
	"github.com/weavemesh/weave/internal/logx"
	"golang.org/x/sys/unix"
)

// TUNSETOFFLOAD flags (linux/if_tun.h); x/sys does not define them.
const (
	tunFCsum = 0x01
	tunFTSO4 = 0x02
	tunFTSO6 = 0x04
	tunFUSO4 = 0x20 // Linux >= 6.2
	tunFUSO6 = 0x40
)

// Open creates (or attaches to) the TAP interface cfg.Name.
func Open(cfg Config) (Device, error) {
	return open(cfg, openOffload)
}

// open is Open with the offload opener replaceable, so tests can make the kernel refuse.
func open(cfg Config, offloadOpener func(Config, int) ([]*device, string, error)) (Device, error) {
	log := cfg.logger().With(logx.KeyComponent, "tap")
	queues := max(cfg.Queues, 1)
	if cfg.Offload {
		devs, name, err := offloadOpener(cfg, queues)
		if err == nil {
			log.Info("tap opened with offloads", logx.KeyDevice, name, logx.KeyCount, queues)
			return finishOpen(cfg, devs, name, log)
		}
		log.Warn("tap offloads unavailable, using the plain path", logx.KeyDevice, cfg.Name, logx.KeyErr, err)
	}
	devs, name, err := openWater(cfg, queues)
	if err != nil {
		return nil, err
	}
	log.Info("tap opened", logx.KeyDevice, name, logx.KeyCount, queues)
	return finishOpen(cfg, devs, name, log)
}

func finishOpen(cfg Config, devs []*device, name string, log *slog.Logger) (Device, error) {
	closeAll := func() {
		for _, d := range devs {
			_ = d.Close()
		}
	}
	if cfg.MTU > 0 {
		if err := setMTU(name, cfg.MTU); err != nil {
			closeAll()
			return nil, err
		}
	}
	mtu, err := getMTU(name)
	if err != nil {
		closeAll()
		return nil, err
	}
	for _, d := range devs {
		d.mtu = mtu
		d.log = log.With(logx.KeyDevice, name)
	}
	if len(devs) == 1 {
		return devs[0], nil
	}
	qs := make([]Device, len(devs))
	for i, d := range devs {
		qs[i] = d
	}
	return &multiQueue{device: devs[0], queues: qs}, nil
}

// multiQueue is queue 0 as a Device plus access to all queues.
type multiQueue struct {
	*device
	queues []Device
}

func (m *multiQueue) Queues() []Device { return m.queues }

func (m *multiQueue) Close() error {
	var errs []error
	for _, q := range m.queues {
		errs = append(errs, q.Close())
	}
	return errors.Join(errs...)
}

type ifreqFlags struct {
	name  [unix.IFNAMSIZ]byte
	flags uint16
	_     [22]byte
}

func ioctlPtr(fd uintptr, req uintptr, arg unsafe.Pointer) error {
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, req, uintptr(arg)); errno != 0 {
		return errno
	}
	return nil
}

func ioctlInt(fd uintptr, req uintptr, arg uintptr) error {
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, req, arg); errno != 0 {
		return errno
	}
	return nil
}

// openQueues opens queues queues of the TAP name with open (q: the queue's index; it
// returns the device and the interface's name, which the kernel picks when name is a
// pattern); on failure it closes the queues already open.
func openQueues(name string, queues int, open func(q int, name string) (*device, string, error)) (devs []*device, _ string, err error) {
	defer func() {
		if err != nil {
			for _, d := range devs {
				_ = d.Close()
			}
			devs = nil
		}
	}()
	for q := range queues {
		d, n, err := open(q, name)
		if err != nil {
			return devs, name, err
		}
		name = n
		devs = append(devs, d)
	}
	return devs, name, nil
}

func openOffload(cfg Config, queues int) ([]*device, string, error) {
	return openQueues(cfg.Name, queues, func(q int, name string) (*device, string, error) {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
		if err != nil {
			return nil, name, fmt.Errorf("open /dev/net/tun: %w", err)
		}
		var req ifreqFlags
		copy(req.name[:unix.IFNAMSIZ-1], name)
		req.flags = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR
		if queues > 1 {
			req.flags |= unix.IFF_MULTI_QUEUE
		}
		if err := ioctlPtr(uintptr(fd), unix.TUNSETIFF, unsafe.Pointer(&req)); err != nil {
			_ = unix.Close(fd)
			return nil, name, fmt.Errorf("tunsetiff %q with vnet header: %w", name, err)
		}
		name = unix.ByteSliceToString(req.name[:])
		if q == 0 {
			hdrSize := int32(VirtioNetHdrLen) // the kernel reads a C int
			if err := ioctlPtr(uintptr(fd), unix.TUNSETVNETHDRSZ, unsafe.Pointer(&hdrSize)); err != nil {
				_ = unix.Close(fd)
				return nil, name, fmt.Errorf("tunsetvnethdrsz %s: %w", name, err)
			}
			// UDP segmentation offload where the kernel has it (>= 6.2), TCP only where not.
			if err := ioctlInt(uintptr(fd), unix.TUNSETOFFLOAD, tunFCsum|tunFTSO4|tunFTSO6|tunFUSO4|tunFUSO6); err != nil {
				if err := ioctlInt(uintptr(fd), unix.TUNSETOFFLOAD, tunFCsum|tunFTSO4|tunFTSO6); err != nil {
					_ = unix.Close(fd)
					return nil, name, fmt.Errorf("tunsetoffload %s: %w", name, err)
				}
			}
			if err := setPersist(uintptr(fd), cfg.Persist); err != nil {
				_ = unix.Close(fd)
				return nil, name, err
			}
		}
		d, err := newDevice(os.NewFile(uintptr(fd), "/dev/net/tun"), name, true)
		return d, name, err
	})
}

func setPersist(fd uintptr, on bool) error {
	v := uintptr(0)
	if on {
		v = 1
	}
	if err := ioctlInt(fd, unix.TUNSETPERSIST, v); err != nil {
		return fmt.Errorf("tunsetpersist %v: %w", on, err)
	}
	return nil
}

func openWater(cfg Config, queues int) ([]*device, string, error) {
	return openQueues(cfg.Name, queues, func(_ int, name string) (*device, string, error) {
		// water sets TUNSETPERSIST to exactly cfg.Persist on every open, clearing a
		// persistence left behind by an earlier run when Persist is false.
		ifce, err := water.New(water.Config{
			DeviceType: water.TAP,
			PlatformSpecificParams: water.PlatformSpecificParams{
				Name: name, Persist: cfg.Persist, MultiQueue: queues > 1,
			},
		})
		if err != nil {
			return nil, name, fmt.Errorf("open tap %q: %w", name, err)
		}
		name = ifce.Name()
		f, ok := ifce.ReadWriteCloser.(*os.File)
		if !ok {
			_ = ifce.Close()
			return nil, name, fmt.Errorf("water returned a %T, not an *os.File", ifce.ReadWriteCloser)
		}
		d, err := newDevice(f, name, false)
		return d, name, err
	})
}

// device is one queue of a TAP interface.
type device struct {
	name string
	mtu  int
	vnet bool // frames carry a virtio-net header
	log  *slog.Logger
	file *os.File
	rc   syscall.RawConn

	closeOnce sync.Once
	closed    atomic.Bool

	// Read side: one reader at a time (documented on Device.Read).
	rbuf     []byte // one kernel frame, with its virtio-net header
	rtarget  []byte // where rawRead reads: rbuf, or the caller's buffer on the plain path
	rn       int
	rerr     error
	rblock   bool
	readFn   func(fd uintptr) bool // bound once, so that Read does not allocate a closure
	sup      Super
	next     int // next segment of sup to return
	pending  bool
	rdropLog int

	// Write side, guarded by wmu.
	wmu     sync.Mutex
	co      *Coalescer
	wbuf    []byte
	wn      int
	werr    error
	writeFn func(fd uintptr) bool
	// Segments of a super-frame WriteGSO cuts for a device without offloads.
	segBufs  [][]byte
	segSizes []int

	stats struct {
		rxFrames, rxSuper, rxDropped               atomic.Uint64
		txFrames, txWrites, txCoalesced, txDropped atomic.Uint64
	}
}

var (
	_ Device        = (*device)(nil)
	_ StatsReporter = (*device)(nil)
	_ Offloader     = (*device)(nil)
	_ MultiQueue    = (*multiQueue)(nil)
)

func newDevice(f *os.File, name string, vnet bool) (*device, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("tap %s: raw conn: %w", name, err)
	}
	var cerr error
	if err := rc.Control(func(fd uintptr) { cerr = unix.SetNonblock(int(fd), true) }); err != nil || cerr != nil {
		_ = f.Close()
		return nil, fmt.Errorf("tap %s: set non-blocking: %w", name, errors.Join(err, cerr))
	}
	_ = rc.Control(func(fd uintptr) { unix.CloseOnExec(int(fd)) })
	d := &device{name: name, vnet: vnet, file: f, rc: rc, log: slog.New(slog.DiscardHandler)}
	d.rbuf = make([]byte, VirtioNetHdrLen+MaxFrameSize)
	d.readFn = d.rawRead
	d.writeFn = d.rawWrite
	if vnet {
		d.co = NewCoalescer(IdealBatchSize)
	}
	return d, nil
}

func (d *device) Name() string        { return d.name }
func (d *device) MTU() int            { return d.mtu }
func (d *device) BatchSize() int      { return IdealBatchSize }
func (d *device) OffloadActive() bool { return d.vnet }

func (d *device) Stats() Stats {
	return Stats{
		RxFrames: d.stats.rxFrames.Load(), RxSuperFrames: d.stats.rxSuper.Load(), RxDropped: d.stats.rxDropped.Load(),
		TxFrames: d.stats.txFrames.Load(), TxWrites: d.stats.txWrites.Load(),
		TxCoalesced: d.stats.txCoalesced.Load(), TxDropped: d.stats.txDropped.Load(),
	}
}

func (d *device) Close() error {
	var err error
	d.closeOnce.Do(func() {
		d.closed.Store(true)
		err = d.file.Close()
	})
	return err
}

// rawRead runs inside the poller: one read(2), waiting for readiness only when rblock.
//
// The read is a RawSyscall: unix.Read enters through entersyscall, which wakes a sleeping
// sysmon on the first frame after every idle spell (a futex wake and a context switch on the
// path of each ping). The fd is non-blocking, so the call returns at once.
func (d *device) rawRead(fd uintptr) bool {
	n, errno := rawIO(unix.SYS_READ, fd, d.rtarget)
	d.rn, d.rerr = n, errOf(errno)
	if errno == unix.EAGAIN || errno == unix.EINTR {
		return !d.rblock
	}
	return true
}

// rawWrite is one write(2) through RawSyscall, like rawRead: the fd is non-blocking, and
// the runtime's entersyscall would wake its sysmon thread on the first write after an idle
// spell (a futex wake and a context switch on every hop of an idle path).
func (d *device) rawWrite(fd uintptr) bool {
	n, errno := rawIO(unix.SYS_WRITE, fd, d.wbuf)
	d.wn, d.werr = n, errOf(errno)
	return !(errno == unix.EAGAIN || errno == unix.EINTR)
}

// rawIO is read(2) or write(2) (trap) of b through RawSyscall: the count, or 0 and the errno.
func rawIO(trap, fd uintptr, b []byte) (int, unix.Errno) {
	var p unsafe.Pointer
	if len(b) > 0 {
		p = unsafe.Pointer(&b[0])
	}
	n, _, errno := unix.RawSyscall(trap, fd, uintptr(p), uintptr(len(b)))
	if errno != 0 {
		return 0, errno
	}
	return int(n), 0
}

// errOf is errno as an error: nil for 0.
func errOf(errno unix.Errno) error {
	if errno == 0 {
		return nil
	}
	return errno
}

func (d *device) closedErr(err error) error {
	if d.closed.Load() || errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("tap %s: %w", d.name, net.ErrClosed)
	}
	return fmt.Errorf("tap %s: %w", d.name, err)
}

func (d *device) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	if d.closed.Load() {
		return 0, d.closedErr(nil)
	}
	if len(bufs) == 0 {
		return 0, nil
	}
	n := 0
	if d.pending {
		k, err := Segment(&d.sup, d.next, bufs, sizes, offset)
		if err != nil {
			d.dropRead(err, d.sup.Segments()-d.next)
			d.pending = false
		} else {
			d.next += k
			n += k
			d.pending = d.next < d.sup.Segments()
		}
	}
	for n < len(bufs) && !d.pending {
		d.rblock = n == 0
		d.rtarget = d.rbuf
		if !d.vnet {
			// No header to decode and nothing to segment: read straight into the caller's
			// buffer, leaving one byte spare to detect a frame too long for it.
			if len(bufs[n]) <= offset+1 {
				return n, fmt.Errorf("tap %s: %d-byte buffer leaves no room after offset %d", d.name, len(bufs[n]), offset)
			}
			d.rtarget = bufs[n][offset:]
		}
		err := d.rc.Read(d.readFn)
		d.rtarget = nil // do not keep the caller's buffer alive
		if err != nil {
			if n > 0 {
				break
			}
			return 0, d.closedErr(err)
		}
		if d.rerr == unix.EAGAIN || d.rerr == unix.EINTR {
			break // nothing more ready and we already have frames
		}
		if d.rerr != nil {
			if n > 0 {
				break // report it on the next call
			}
			return 0, d.closedErr(d.rerr)
		}
		n += d.consume(bufs[n:], sizes[n:], offset)
	}
	d.stats.rxFrames.Add(uint64(n))
	return n, nil
}

// consume turns the frame in rbuf into as many of bufs as it needs and fit.
func (d *device) consume(bufs [][]byte, sizes []int, offset int) int {
	if !d.vnet {
		if d.rn >= len(bufs[0])-offset {
			// The kernel truncated it (read returns less than the frame only by filling the buffer).
			d.dropRead(fmt.Errorf("frame does not fit a %d-byte buffer at offset %d", len(bufs[0]), offset), 1)
			return 0
		}
		sizes[0] = d.rn
		return 1
	}
	pkt := d.rbuf[:d.rn]
	var h VirtioNetHdr
	if err := h.Decode(pkt); err != nil {
		d.dropRead(err, 1)
		return 0
	}
	if err := PrepareRead(&h, pkt[VirtioNetHdrLen:], &d.sup); err != nil {
		d.dropRead(err, 1)
		return 0
	}
	k, err := Segment(&d.sup, 0, bufs, sizes, offset)
	if err != nil {
		d.dropRead(err, d.sup.Segments())
		return 0
	}
	if d.sup.Segments() > 1 {
		d.stats.rxSuper.Add(1)
	}
	d.next, d.pending = k, k < d.sup.Segments()
	return k
}

func (d *device) dropRead(err error, frames int) {
	d.stats.rxDropped.Add(uint64(frames))
	// Hostile or unexpected kernel input must not flood the log: the first few, then every 1000th.
	if d.rdropLog < 10 || d.rdropLog%1000 == 0 {
		d.log.Warn("tap frame dropped on read", logx.KeyErr, err, logx.KeyCount, frames)
	}
	d.rdropLog++
}

func (d *device) Write(bufs [][]byte, offset int) (int, error) {
	d.wmu.Lock()
	defer d.wmu.Unlock()
	if d.closed.Load() {
		return 0, d.closedErr(nil)
	}
	d.stats.txFrames.Add(uint64(len(bufs)))
	var firstErr error
	written := 0
	if !d.vnet {
		for _, b := range bufs {
			d.wbuf = b[offset:]
			if err := d.write(&firstErr); err != nil {
				return written, err
			}
			if d.werr == nil {
				written++
			}
		}
		return written, firstErr
	}
	writes, err := d.co.Coalesce(bufs, offset)
	if err != nil {
		return 0, fmt.Errorf("tap %s: %w", d.name, err)
	}
	for _, w := range writes {
		d.wbuf = bufs[w.Index][offset-VirtioNetHdrLen : offset+w.Len]
		if err := d.write(&firstErr); err != nil {
			return written, err
		}
		if d.werr == nil {
			written += w.Segs
			d.stats.txCoalesced.Add(uint64(w.Segs - 1))
		} else {
			d.stats.txDropped.Add(uint64(w.Segs - 1))
		}
	}
	return written, firstErr
}

// write writes wbuf; a frame the kernel refuses is counted and remembered in firstErr, and
// only a closed device ends the batch.
func (d *device) write(firstErr *error) error {
	if err := d.rc.Write(d.writeFn); err != nil {
		return d.closedErr(err)
	}
	if d.werr != nil {
		d.stats.txDropped.Add(1)
		if *firstErr == nil {
			*firstErr = fmt.Errorf("tap %s: write: %w", d.name, d.werr)
		}
		return nil
	}
	d.stats.txWrites.Add(1)
	return nil
}

func ifreqSocket() (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket for interface ioctl: %w", err)
	}
	return fd, nil
}

func setMTU(name string, mtu int) error {
	fd, err := ifreqSocket()
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return fmt.Errorf("set mtu of %q: %w", name, err)
	}
	ifr.SetUint32(uint32(mtu))
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFMTU, ifr); err != nil {
		return fmt.Errorf("set mtu %d on %s: %w", mtu, name, err)
	}
	return nil
}

func getMTU(name string) (int, error) {
	fd, err := ifreqSocket()
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return 0, fmt.Errorf("get mtu of %q: %w", name, err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFMTU, ifr); err != nil {
		return 0, fmt.Errorf("get mtu of %s: %w", name, err)
	}
	return int(ifr.Uint32()), nil
}
