// Package fastdp is the kernel data path: a Linux VXLAN device on the weave bridge,
// programmed through netlink from what the mesh and the router learn, so frames between
// containers of two hosts never touch userspace. (An Open vSwitch backend may follow.)
//
// # Device
//
// One VXLAN device ("vxlan-6784": UDP --port+1, kernel learning off, DF set on the outer
// header, MTU = underlay MTU - 50) is a port of the bridge. Its FDB holds, per peer whose
// heartbeats pass: an all-zero MAC entry (broadcast and unknown unicast are replicated to
// fastdp peers only) and the peer's learned MACs (Learn/Forget). The VNI keeps several
// meshes sharing a host or an underlay apart (VNIFor). Both the VXLAN port and the router's
// TAP are "isolated" bridge ports, so the bridge never hands a frame that came through one
// overlay to the other: the router never mistakes a frame from VXLAN for a local one, and a
// frame the router injected from sleeve never leaves again through VXLAN.
//
// # Heartbeats
//
// A pair uses fastdp only while heartbeats pass both ways through the real kernel path.
// Each round (default every 500ms) we write two Ethernet frames into the VXLAN device from
// an AF_PACKET socket: a small one and one of the full MTU. Their destination is the
// link-local group 01:80:c2:00:00:0e, which has one FDB entry per peer (kept whatever the
// pair's state, unlike the flood entry), so the kernel encapsulates one copy to every peer
// exactly as it would a container's frame: same socket, same port, same DF, same MTU. On
// the receiving host the VXLAN device decapsulates it and the bridge, which never forwards
// link-local groups, passes it up on the device, where our socket (bound to EtherType
// 0x88b5 only, so data frames never reach userspace) reads it. The receiver acknowledges
// each heartbeat over the mesh control connection (reliable, authenticated, already
// there), so one working direction of UDP is enough to learn that the other one fails.
//
// From the evidence each pair runs a state machine (probing -> healthy -> unhealthy ->
// healthy): a direction silent for DownAfter (3s) makes the pair unhealthy; it returns only
// after heartbeats pass both ways continuously for a hold-off that doubles at each failure
// (up to 2m) and resets after a minute of health, so a flapping path settles on sleeve.
// The reason is stable and specific: udp-blocked (and which way), mtu (small heartbeats
// pass, full-size ones do not), nat (the peer sees us, or we see it, at another address),
// recovering, encryption, peer-without-fastdp, config-mismatch; the daemon adds disabled
// and no-kernel-support.
//
// # Switch-over
//
// OnChange calls come from one goroutine, in order. Going to fastdp, the kernel entries are
// installed first and the switch is told after; leaving, the switch is told first and the
// entries go after it returns; each time the bridge's learned entries are flushed, so that
// it floods until it relearns which port (TAP or VXLAN) each MAC is behind.
//
// # Counters
//
// Containers' frames never reach userspace, so Stats takes fastdp's frame, byte and drop
// counters from the VXLAN device's own link statistics (one netlink request per call,
// counted from New so that they start at zero with the daemon like every other counter):
// what the kernel encapsulated and decapsulated, heartbeats included, and what it dropped
// (transmit drops are mostly frames for a MAC whose peer is on sleeve: the drop entries).
// Stats.Overlay maps them for the daemon's metrics. A Kernel that cannot read its counters
// (it does not implement StatsKernel) leaves fastdp counting heartbeats only.
//
// # MTU
//
// The device takes the MTU it is given (the daemon gives the container MTU, which leaves
// room for the sleeve's larger overhead, so that a pair falling back to sleeve keeps its
// MTU), or underlay - 50. A container MTU is fixed when the container is attached, while a
// pair's overlay can change at any time; so the default stays the sleeve's, and a user whose
// pairs all run fastdp can raise it to the VXLAN MTU with --mtu. The bench measures both
// (fastdp, fastdp-mtu1450): the difference is within its noise.
//
// # Who may send to the device
//
// A VXLAN device accepts any datagram with its VNI from anyone, and the VNI is no secret.
// Config.Filter (package guard: nftables) admits a peer's underlay address from the moment
// we heartbeat with it (probing: its answers must get in) until the pair ends, and nobody
// else's; addresses are reference-counted (peers behind one NAT share one).
//
// # Encryption
//
// A pair that needs encryption (password, not trusted) stays on the encrypted sleeve with
// ReasonEncryption: this kernel path has no ESP, and nothing ever falls back to plaintext.
// The daemon does not even create the device for a password mesh (unless trusted subnets
// let some pairs go without encryption), since the device itself would be an
// unauthenticated way in. IPsec (transport-mode ESP between the two underlay addresses, keys
// from the mesh connection's) would slot in at the daemon's fastdpPolicy and at AddPeer:
// install the SAs, then probe as for any pair.
package fastdp
