package netdev

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestOpenNetnsRefusesWhatIsNotANetworkNamespace: a FIFO (whose open would block), a plain
// file, a device and a namespace of another kind are refused at once with ErrNotNetns; a
// missing path is ErrNotExist; the process's own network namespace opens.
func TestOpenNetnsRefusesWhatIsNotANetworkNamespace(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	plain := filepath.Join(dir, "plain")
	if err := os.WriteFile(plain, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{fifo, plain, "/dev/null", "/proc/self/ns/mnt", "/proc/self/ns/uts"} {
		done := make(chan error, 1)
		go func() { done <- CheckNetns(p) }()
		select {
		case err := <-done:
			if !errors.Is(err, ErrNotNetns) {
				t.Errorf("%s: %v, want ErrNotNetns", p, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: the check blocks", p)
		}
	}
	if err := CheckNetns(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing path: %v, want ErrNotExist", err)
	}
	if err := CheckNetns("/proc/self/ns/net"); err != nil {
		t.Errorf("own network namespace: %v", err)
	}
}
