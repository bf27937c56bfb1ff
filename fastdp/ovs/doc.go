// Package ovs is the Open vSwitch backend of fastdp (--datapath=ovs), for hosts that already
// run Open vSwitch: the role of fastdp's Linux VXLAN device is played by one OVS bridge with a
// VXLAN port per remote peer, configured through libovsdb against the local ovsdb-server
// (ovs-vswitchd does the forwarding; we never speak OpenFlow).
//
// # Design
//
// One bridge (default "weave-ovs", datapath_type "system", or "netdev" for the userspace
// datapath) with the bridge's default NORMAL pipeline doing MAC learning. Per peer a port
// "wvx<12 hex>" of type vxlan with options remote_ip (the peer's underlay address), dst_port
// (--port+1, 6784 by default, as fastdp) and key (the VNI, fastdp.VNIFor). Every tunnel port
// is "protected": OVS's NORMAL action never forwards between two protected ports, which is
// the split horizon the Linux backend gets from its single VXLAN device. Without it a
// broadcast from one peer would be flooded to every other peer, and with three hosts in a
// full mesh it would loop forever.
//
// A pair that leaves fastdp (SetPeerActive false) keeps its port, which moves into the
// otherwise unused VLAN 4094: NORMAL then neither floods to it nor delivers what arrives
// through it, and OVS flushes the MACs learned on it. Every other port of ours carries
// untagged frames only (trunks [0]); a port without one would carry all VLANs, so the
// quarantined frames would leak to it 802.1Q-tagged. (Containers' own VLAN-tagged frames
// are therefore not carried.)
//
// Local traffic enters through ordinary system ports. AttachLinuxBridge joins the weave
// Linux bridge with an owned veth pair (vethwe-ovs in OVS, vethwe-ovsbr an isolated port
// of the Linux bridge, like fastdp's VXLAN device), so containers, weavectl attach, the
// CNI plugin and the router's TAP stay on the Linux bridge exactly as with the other
// datapaths; AddLocalPort adds any other existing device (the tests also attach container
// veths directly). With the userspace datapath ovs-vswitchd reads frames from a veth as
// they are and never completes a partial checksum, so the veth ends it reads need TX
// checksum offload off (AttachLinuxBridge does it: the kernel then finishes checksums as
// frames cross the pair, and containers on the Linux bridge keep their offloads; a
// container attached directly to OVS needs `ethtool -K eth0 tx off` itself). Also, the
// underlay address must sit on an OVS netdev bridge that owns the physical port: OVS's
// userspace tunnels route and ARP only through its own bridges. The kernel datapath has
// neither constraint.
//
// # Ownership
//
// Every row we create carries external_ids weave-owner=<Config.Owner> (and weave-peer or
// weave-role), and we only ever change or delete rows that carry our tag, so a host's own
// OVS configuration is never touched. Cleanup removes our bridge, its ports (OVSDB's
// garbage collection drops ports and interfaces no longer referenced) and the Linux
// devices handed to AddLocalPort with Owned set.
//
// # Use
//
//	links, _ := ovs.NewNetlinkLinks("")
//	b, err := ovs.New(ctx, ovs.Config{Socket: "/run/openvswitch/db.sock", DatapathType: "system",
//		Port: port + 1, VNI: fastdp.VNIFor(id), Links: links, Logger: log})
//	err = b.EnsureBridge()
//	err = b.AttachLinuxBridge("weave", fastdp.MTUFor(underlayMTU, false))
//	err = b.AddPeer(peerName, peerUnderlayAddr) // on connection up; RemovePeer on down
//	err = b.SetPeerActive(peerName, healthy)    // fastdp <-> sleeve switch-over
//	b.Close()                                   // weavectl stop: configuration stays
//	b.Cleanup()                                 // weavectl reset: bridge, ports, veth go
//
// # As fastdp's Kernel
//
// Health (heartbeats, fallback to sleeve) stays in package fastdp: Kernel implements
// fastdp.Kernel over a Backend, so `weaver --datapath=ovs` runs fastdp unchanged:
//
//	k, err := ovs.NewKernel(ovs.KernelConfig{Backend: b, Links: links, Bridge: "weave",
//		MTU: mtu, Isolate: []string{"vethwe-tap"}, Logger: log}) // owns b and links from now
//	fdp, err := fastdp.New(fastdp.Config{Name: name, Port: port + 1, VNI: vni, Kernel: k, ...})
//
// Per remote address a tunnel port (PeerPort) is made quarantined by SetHeartbeatRemote and
// taken out of quarantine by SetFloodRemote. Heartbeats are written into two owned veth
// pairs, one a port of the untagged VLAN and one of QuarantineVLAN (HeartbeatOVS0/1, with a
// packet socket on HeartbeatHost0/1), so each peer gets exactly one copy whether its port is
// active or not, through the same tunnel port, VNI and UDP port as the data: a peer running
// the Linux VXLAN backend sees them exactly as its own. Our bridge forwards the reserved
// heartbeat group 01:80:c2:00:00:0e (other_config:forward-bpdu=true). Unicast MACs are left
// to NORMAL's learning.
package ovs
