// Package fastdp is the kernel data path: a Linux VXLAN device on the weave bridge whose FDB
// is programmed through netlink from what the mesh and l2switch learn, so frames between
// containers of two hosts never touch userspace. Per peer it is used only while its own
// heartbeats pass both ways (fastdp.go: device and peers; beat.go: the heartbeat loop;
// health.go: the per-pair state machine; wire.go: heartbeat and ack formats); otherwise the
// pair stays on the sleeve with a Reason. The Open vSwitch backend is package fastdp/ovs.
// The design is in docs/DESIGN.md ("fastdp in depth").
package fastdp
