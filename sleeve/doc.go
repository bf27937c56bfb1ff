// Package sleeve is the userspace overlay: Ethernet frames packed several to a UDP datagram
// on the router's port (Weave's sleeve layout, see wire.go), sealed with the per-connection
// keys of the mesh handshake (AES-256-GCM when both ends offer it, NaCl secretbox otherwise;
// counter nonces, a sliding replay window; unsealed only without a password or between
// peers that trust each other's subnet), and relayed hop by hop along mesh routes by the
// router.
//
// Per mesh connection, once both ends have exchanged a hello over the mesh (UDP port,
// trust), the sleeve sends heartbeats over UDP; when they pass both ways and the path MTU is
// verified by probing, it tells the mesh the connection is established, so that routes use
// it; when heartbeats stop, it withdraws it. Datagrams are sized to the verified path MTU
// and sent with don't-fragment. The pipelines are described at the top of send.go and
// receive.go.
package sleeve
