// Package guard is the underlay firewall in front of the kernel data path's VXLAN port.
//
// A VXLAN device (or an OVS VXLAN port) accepts any datagram on its UDP port whose VNI
// matches, from any source, and hands the inner frame to the bridge: without a filter,
// anyone who can reach the host's underlay address could inject frames (an ICMP echo, a
// gratuitous ARP poisoning a container's cache) straight into the overlay. The kernel
// path has no authentication of its own, so the only defence is to accept its datagrams
// from the peers we run fastdp with and from nobody else.
//
// Guard keeps an nftables table of its own ("inet weave-fastdp", over netlink, never by
// exec'ing nft or iptables) in the router's network namespace:
//
//	table inet weave-fastdp {
//		set peers4 { type ipv4_addr }
//		set peers6 { type ipv6_addr }
//		chain input {
//			type filter hook input priority filter; policy accept;
//			meta nfproto ipv4 udp dport PORT ip saddr @peers4 accept
//			meta nfproto ipv6 udp dport PORT ip6 saddr @peers6 accept
//			udp dport PORT counter drop
//		}
//	}
//
// The input hook sees every datagram for a local UDP socket, the kernel's VXLAN sockets
// (Linux device and OVS vport alike) included, after IPv4 reassembly. Open replaces any
// table a previous run left (a crash, kill -9) in one transaction, so stale allowances
// never survive a restart and there is no moment when the port is open. Each Allow is one
// transaction on the set. Close leaves the table: the VXLAN device stays across a stop,
// so its filter must stay with it; Remove (reset) deletes it.
//
// The drop rule's counter is what Refused reports: datagrams from non-peers (the daemon
// exports it as weave_fastdp_refused_total).
//
// Limits: OVS with datapath_type=netdev receives tunnel traffic in userspace from the
// physical port, before the host's input hook; the guard does not cover that mode.
package guard

import (
	"errors"
	"log/slog"
	"net/netip"
)

// DefaultTable is the nftables table (family inet) a Guard owns.
const DefaultTable = "weave-fastdp"

// ErrUnsupported: this OS (or kernel) has no nftables; the kernel path must then stay off.
var ErrUnsupported = errors.New("guard: nftables not supported")

// Config configures Open.
type Config struct {
	// Port is the UDP port to guard (the VXLAN port). Required.
	Port int
	// Table is the inet table name; default DefaultTable.
	Table string
	// Logger receives structured logs; nil discards them.
	Logger *slog.Logger
}

func (c *Config) defaults() {
	if c.Table == "" {
		c.Table = DefaultTable
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// State is what the kernel holds for a guard table; Read returns it.
type State struct {
	// Present: the table exists.
	Present bool
	// Port is the guarded UDP port (0 if the rules do not say).
	Port int
	// Allowed are the addresses in the sets.
	Allowed []netip.Addr
	// Refused counts datagrams the drop rule dropped since the table was made.
	Refused uint64
}
