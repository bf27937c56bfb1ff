// Package ipam allocates overlay addresses from a ring of address ranges owned by peers and
// merged as a CRDT over mesh gossip, so that no address is ever handed out twice. Allocator
// is one peer's share: a mesh.Gossiper on channel "ipam", saved in a bbolt database in the
// state dir. README.md says how it works, what differs from Weave's IPAM, and which file
// holds what.
package ipam
