// Package tap defines Device, the batched bridge-side interface to a TAP device that carries
// Ethernet frames between the weave bridge and the router, and its Linux implementations.
//
// Open picks one of two Linux paths. Without offloads the interface is opened through
// github.com/songgao/water and every read or write is one frame. With Config.Offload,
// /dev/net/tun is opened directly with IFF_VNET_HDR and TUNSETOFFLOAD(CSUM|TSO4|TSO6, plus
// USO4|USO6 on kernels >= 6.2): the kernel then hands over TCP (and UDP_SEGMENT) super-frames
// of up to 64 KiB, which Read cuts into MTU-sized frames with complete checksums (Segment),
// and Write merges consecutive TCP segments of a flow
// back into one super-frame per kernel write (Coalescer). Frames that are not plain TCP over
// IPv4/IPv6 (ARP, UDP, anything with one VLAN tag or none that is not TCP) pass untouched.
//
// Buffers always belong to the caller and carry Headroom bytes in front of each frame, so
// the virtio-net header and the sleeve's encapsulation are written in place; with buffers
// of IdealBatchSize and reused slices, neither path allocates per frame. tap/frame holds the
// header parsers and the checksum, tap/taptest an in-memory Device for tests.
package tap
