// Package udp defines Bind, the batched wire-side interface to the underlay UDP socket, and
// its Linux implementation with recvmmsg/sendmmsg and UDP GSO/GRO where the kernel has them.
package udp
