// Package overlay holds the interfaces shared by the data-plane overlays (sleeve, fastdp):
// the per-peer forwarder, the switch that picks one overlay per peer, and a Null overlay.
package overlay
