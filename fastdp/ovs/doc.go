// Package ovs is the Open vSwitch backend of fastdp (--datapath=ovs): one OVS bridge with a
// protected VXLAN port per remote peer, configured through libovsdb against the local
// ovsdb-server, joined to the weave Linux bridge by an owned veth pair. Kernel implements
// fastdp.Kernel over a Backend, so heartbeats and the fallback to sleeve stay fastdp's.
// Only rows tagged with our owner are ever changed. The design, and a usage sketch, are in
// docs/DESIGN.md ("fastdp/ovs in depth").
package ovs
