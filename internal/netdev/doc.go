// Package netdev wraps the host plumbing the daemon needs (bridge, TAP, veth, addresses)
// behind a small interface over vishvananda/netlink, with a fake for tests.
package netdev
