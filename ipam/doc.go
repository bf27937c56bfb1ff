// Package ipam allocates overlay addresses from a ring of address ranges owned by peers and
// merged as a CRDT over mesh gossip, so that no address is ever handed out twice.
//
// The reasoning lives in pure, deterministic packages: ring (the CRDT: tokens, grants,
// transfers, merge), space (one peer's owned, free and used addresses), paxos (agreement on
// the first split) and addr (IPv4 arithmetic). Allocator wires them to the mesh (it is a
// mesh.Gossiper on channel "ipam"), to a bbolt database in the state dir, and to a Peers
// view of reachability and failure detection. All its state sits behind one mutex; messages
// are queued under it and sent after the state they announce is on disk.
//
// Differences from Weave's IPAM, each for a complaint users had: a ring that cannot be
// merged is refused and reported, never a reason to drop a connection; space of peers the
// cluster agrees are dead can be reclaimed automatically (Config.ReclaimAfter), and a peer
// that comes back re-claims the addresses it still uses, each clash reported rather than
// duplicated; a ring seeded apart is refused with the repair in the error (README.md, "When
// rings disagree"); an acceptor's Paxos promises are persisted, so a restart mid-election cannot make
// it vote twice. README.md describes the operations side.
package ipam
