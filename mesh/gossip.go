package mesh

// Gossip channels let other packages (IPAM, DNS) share state over the mesh without knowing
// its topology. The shape follows weaveworks/mesh, which Weave's IPAM was built on.
//
// Delivery: unicast travels hop by hop along the mesh's unicast routes; broadcast travels
// along the origin's spanning tree, so every peer receives it once; periodic gossip sends the
// channel's full state to a few random neighbours, and whatever a receiver learns from it
// (the delta returned by OnGossip) spreads further. A channel unknown to a peer is still
// relayed by it.

// GossipData is a channel's mergeable state (or a delta of it).
type GossipData interface {
	// Encode returns the state as one or more self-contained messages.
	Encode() [][]byte
	// Merge folds other into the receiver and returns the result.
	Merge(other GossipData) GossipData
}

// Gossiper is implemented by a channel's owner. Its methods are called from the mesh's
// goroutines: they must not block for long and must copy any byte slice they keep.
type Gossiper interface {
	// OnGossipUnicast handles a message sent to this peer alone.
	OnGossipUnicast(src PeerName, msg []byte) error
	// OnGossipBroadcast merges a broadcast update and returns what should be relayed
	// further (nil: nothing).
	OnGossipBroadcast(src PeerName, update []byte) (received GossipData, err error)
	// Gossip returns the full state, sent periodically to random neighbours.
	Gossip() (complete GossipData)
	// OnGossip merges periodic gossip and returns the part that was new to us (nil: nothing).
	OnGossip(msg []byte) (delta GossipData, err error)
}

// Gossip is the sending side of a channel, returned when a Gossiper is registered.
type Gossip interface {
	// GossipUnicast sends msg to dst along the unicast routes.
	GossipUnicast(dst PeerName, msg []byte) error
	// GossipBroadcast sends update to every peer, once each, along the spanning tree.
	GossipBroadcast(update GossipData)
	// GossipNeighbourSubset sends update to a few random neighbours, who spread what is new.
	GossipNeighbourSubset(update GossipData)
}
