//go:build !linux

package udp

// Listen opens the portable Bind (one datagram per system call, no offloads).
func Listen(cfg Config) (Bind, error) {
	b, err := listenStd(cfg)
	if err != nil {
		return nil, err
	}
	return b, nil
}
