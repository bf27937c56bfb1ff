// Package overlay holds what the router and the data-plane overlays (sleeve, fastdp) share:
// the Frame a peer-to-peer hop carries, the Forwarder an overlay offers the router, the
// Receiver the router offers back, their counters, and a Null forwarder. Overlays never
// import the router; the router only knows these interfaces.
package overlay
