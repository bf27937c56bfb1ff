// Package tap defines Device, the batched bridge-side interface to a TAP device that carries
// Ethernet frames between the weave bridge and the router, and its Linux implementations.
package tap
