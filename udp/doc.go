// Package udp defines Bind, the batched wire-side interface to the underlay UDP socket, and
// its Linux implementation with recvmmsg/sendmmsg and UDP GSO/GRO where the kernel has them.
//
// Listen probes the offloads when the socket opens (UDP_SEGMENT for GSO; kernel >= 5.12 for
// GRO) and falls back by itself: a kernel that answers a GSO send with EIO switches GSO off
// for good. Optional capabilities are small interfaces found by type assertion: Offloads (is
// GSO/GRO on), PathMTU (don't-fragment and IP_MTU for the sleeve's PMTU discovery) and
// StatsReporter. The Linux Bind enters recvmmsg and sendmmsg on its non-blocking socket with
// RawSyscall6, so that an idle path does not wake the runtime's sysmon on every datagram
// (busy polling after a datagram was tried and made the sleeve's round trips slower on two
// vCPUs: the spinning reader holds the CPU the answer needs). Other systems get a portable one-datagram-per-call Bind. udp/udptest holds
// in-memory Binds and an underlay with loss and blocked links for tests without root.
package udp
