// Package frame parses the headers the data plane looks at (Ethernet with one optional VLAN
// tag, IPv4, IPv6, TCP and UDP) and computes Internet checksums. Every parser takes untrusted bytes,
// never panics and never allocates; it returns a wrapped ErrMalformed when the bytes do not hold
// what they claim. The router uses it for MAC learning and the tap package for TSO/GRO.
package frame
