// Package mesh is the control plane: peer identity, encrypted TCP connections between peers,
// topology gossip with spanning-tree broadcast, unicast and broadcast routes, gossip channels
// for other packages (IPAM), and hashicorp/memberlist riding the mesh for failure
// detection. It imports nothing of the project above it.
//
// A Router is the local peer. It takes a Transport (TCP in production, a MemNetwork in tests,
// so hundreds of routers run in one process without sockets):
//
//	name, _ := mesh.LoadOrCreateName(stateDir, "")
//	r, _ := mesh.New(mesh.Config{Name: name, NickName: host, StateDir: stateDir,
//		Password: pw, Peers: []string{"10.0.0.2"}, Logger: log})
//	r.Start()
//	defer r.Close()
//	g, _ := r.NewGossip("IPallocation", myGossiper)
//
// Files, one concept each: identity.go (peer name persistence), config.go, transport.go
// (Transport, MemNetwork), router.go (lifecycle, timers), connection.go (handshaken
// connections, tie-break, heartbeats, overlay hook), connmaker.go (targets, backoff,
// discovery), topology.go and topo.go (peer entries, their codec, and the gossip protocol as a
// state machine without I/O), routes.go (BFS routes and broadcast trees), gossip_channel.go,
// memberlist.go, status.go, wire.go (message tags and bounded decoding). handshake.go,
// framing.go and crypto.go hold the connection handshake and sealed framing.
//
// Topology traffic is proportional to what changed: a peer's own change travels once to every
// peer along its broadcast tree; neighbours compare an 8-byte topology hash periodically and
// exchange a digest only when a mismatch persists. sim_test.go measures convergence and bytes
// per peer for 100 and 1000 peers (BenchmarkConvergence).
package mesh
