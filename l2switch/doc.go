// Package l2switch is the layer-2 forwarding core of the router (weaver): a learning switch
// between the TAP on the weave bridge and the overlays. It learns which peer owns each MAC
// address, sends unicast frames towards the owning peer and floods broadcast, multicast and
// unknown unicast along the mesh spanning tree (each peer gets each frame once); frames
// received from an overlay are injected into the bridge, relayed hop by hop towards their
// destination peer, or passed on along the tree. Frames too big for the path get an ICMP
// "fragmentation needed" (IPv4 with DF) or are fragmented. It sees only tap, overlay and
// mesh, never a concrete overlay.
package l2switch
