// Package sleeve is the userspace overlay: Ethernet frames packed into UDP datagrams,
// sealed with per-connection keys, relayed hop by hop along mesh routes.
package sleeve
