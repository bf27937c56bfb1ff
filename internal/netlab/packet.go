package netlab

import (
	"os"
	"testing"
	"time"
)

// PacketSocketT is PacketSocket for tests: it fails t on error and closes the socket at
// the end of the test.
func PacketSocketT(t testing.TB, ns, link string, etherType uint16) *os.File {
	t.Helper()
	f, err := PacketSocket(ns, link, etherType)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// CountFramesT is CountFrames for tests, quiet after 300 ms; it fails t on error.
func CountFramesT(t testing.TB, s *os.File) int {
	t.Helper()
	n, err := CountFrames(s, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
