package netlab

import (
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/weavemesh/weave/internal/netdev"
)

// PacketSocket opens a raw AF_PACKET socket for one EtherType on link inside namespace ns: tests
// use it to send hand-made frames and to count exactly which copies of a frame arrived where.
// The socket never sees its own sends.
func PacketSocket(ns, link string, etherType uint16) (*os.File, error) {
	var f *os.File
	err := inNetns(ns, func() error {
		ifi, err := net.InterfaceByName(link)
		if err != nil {
			return err
		}
		f, err = netdev.PacketSocket(ifi.Index, etherType, link)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netlab: packet socket on %s in %s: %w", link, ns, err)
	}
	return f, nil
}

// CountFrames reads what arrives on s until nothing has come for quiet, and returns how many
// frames came: the window in which a forwarding loop would show up as extra copies.
func CountFrames(s *os.File, quiet time.Duration) (int, error) {
	buf := make([]byte, 65536)
	n := 0
	for {
		s.SetReadDeadline(time.Now().Add(quiet))
		if _, err := s.Read(buf); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return n, nil
			}
			return n, fmt.Errorf("netlab: read frames: %w", err)
		}
		n++
	}
}
