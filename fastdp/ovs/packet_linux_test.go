package ovs

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// testEtherType marks the broadcast frames the split-horizon check counts.
const testEtherType = 0x88b6

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// inNetns runs fn on a locked thread inside the named namespace.
func inNetns(name string, fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	target, err := netns.GetFromPath(filepath.Join("/var/run/netns", name))
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return err
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		// The thread is stuck in the wrong namespace: leave it locked so it dies with us.
		return fmt.Errorf("leave netns %s: %w", name, err)
	}
	runtime.UnlockOSThread()
	return ferr
}

// packetSocket opens an AF_PACKET socket for testEtherType on link in namespace ns.
func packetSocket(t *testing.T, ns, link string) *os.File {
	t.Helper()
	var f *os.File
	err := inNetns(ns, func() error {
		ifi, err := net.InterfaceByName(link)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, int(htons(testEtherType)))
		if err != nil {
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(testEtherType), Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return err
		}
		f = os.NewFile(uintptr(fd), link)
		return nil
	})
	if err != nil {
		t.Fatalf("packet socket on %s in %s: %v", link, ns, err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// countFrames reads what arrives on s until it stays quiet for a moment: the window in which
// a forwarding loop would show up as extra copies (a socket of one EtherType never sees its
// own sends).
func countFrames(t *testing.T, s *os.File) int {
	t.Helper()
	buf := make([]byte, 2048)
	n := 0
	for {
		s.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if _, err := s.Read(buf); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return n
			}
			t.Fatalf("read: %v", err)
		}
		n++
	}
}

// burst sends n broadcast frames of testEtherType from send and returns how many each of rx
// received.
func burst(t *testing.T, send *os.File, src byte, n int, rx map[string]*os.File) map[string]int {
	t.Helper()
	frame := make([]byte, 60)
	copy(frame, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0xc1, 0, 0, 0, src, testEtherType >> 8, testEtherType & 0xff})
	for i := 0; i < n; i++ {
		frame[20] = byte(i)
		if _, err := send.Write(frame); err != nil {
			t.Fatal(err)
		}
	}
	got := map[string]int{}
	for name, s := range rx {
		got[name] = countFrames(t, s)
	}
	return got
}
