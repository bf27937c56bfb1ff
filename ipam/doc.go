// Package ipam allocates overlay addresses from a ring of address ranges owned by peers and
// merged as a CRDT over mesh gossip, so that no address is ever handed out twice.
package ipam
