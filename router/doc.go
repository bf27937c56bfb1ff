// Package router is the layer-2 forwarding core: it learns which peer owns each MAC
// address, delivers unicast frames to the owning peer and floods broadcast and unknown
// unicast frames along the mesh spanning tree. It sees only tap, overlay and mesh.
package router
