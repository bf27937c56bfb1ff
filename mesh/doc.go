// Package mesh is the control plane: peer identity, encrypted TCP connections between peers,
// topology gossip with spanning-tree broadcast, unicast and broadcast routes, gossip channels
// for other packages (IPAM, DNS), and hashicorp/memberlist riding the mesh for failure
// detection. It imports nothing of the project above it.
package mesh
