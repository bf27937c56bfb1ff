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
// Local traffic enters through ordinary system ports (AddLocalPort): the daemon adds one
// end of a veth pair whose other end is a port of the weave Linux bridge, so containers,
// weavectl attach, the CNI plugin and the router's TAP stay on the Linux bridge exactly as
// with the other datapaths; the tests also attach container veths directly. With the
// userspace datapath the kernel never fills in checksums of frames read from a veth, so
// those veths need TX checksum offload off (ethtool -K IF tx off) on both ends, and the
// underlay address must sit on an OVS netdev bridge that owns the physical port (OVS's
// userspace tunnels route and ARP only through its own bridges); the kernel datapath has
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
// Health (heartbeats, fallback to sleeve) stays in package fastdp; this package is only
// the programming of the datapath.
package ovs
