// Package mesh is the control plane: peer identity, encrypted TCP connections between peers,
// topology gossip with spanning-tree broadcast, unicast and broadcast routes, gossip channels
// for other packages (IPAM), and hashicorp/memberlist riding the mesh for failure
// detection. It imports nothing of the project above it. The wire protocol is in PROTOCOL.md;
// the design notes and a map of the files are in docs/DESIGN.md.
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
package mesh
