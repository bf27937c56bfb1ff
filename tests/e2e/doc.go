// Package e2e runs several whole daemons (daemon.New, Start, the control API on a unix
// socket) in one process, unprivileged, over the in-memory fakes at the OS boundary
// (daemon.Env): mesh.MemNetwork for TCP, udptest for the sleeve's UDP, taptest for the
// TAP, fastdp.FakeNet for the kernel path and netdev.Fake for the host plumbing. It tests
// the wiring the unit tests of each package cannot see, in seconds; tests/netns covers the
// same ground with real binaries and devices, as root.
package e2e
