// Package netlab builds throw-away networks of Linux network namespaces for tests, the demo
// and the benchmark: N "hosts" joined by veth to an underlay bridge that lives in its own
// namespace, optional NAT namespaces in front of hosts, firewalls between pairs, lowered MTUs,
// random loss, and "container" namespaces hanging off a host's bridge.
//
// Nothing is created in the root network namespace: every link is made directly inside the
// namespaces of the lab, so link names only need to be unique per namespace and the lab's
// addresses (10.201.0.0/24 on the underlay, 10.202.N.0/24 behind NAT N) never touch the
// machine's own routing. Every namespace name starts with a per-run prefix that encodes the
// owning PID, and the owner is also recorded under /run/weave-netlab, so Sweep can remove the
// leftovers of a crashed run without touching labs of live processes running in parallel.
//
// Topology of a 3-host lab where host index 2 is behind a NAT:
//
//	<p>-h1            <p>-h2            <p>-h3 (10.202.3.2)
//	eth0 10.201.0.1   eth0 10.201.0.2   eth0
//	  |                 |                 |
//	  |                 |               lan0 10.202.3.1  <p>-n3 (MASQUERADE)
//	  |                 |               eth0 10.201.0.3
//	  |                 |                 |
//	+-+-----------------+-----------------+-+
//	|        br0 in <p>-u (underlay)        |
//	+---------------------------------------+
//
// In a test (root; New fails the test otherwise, and tears the lab down at its end):
//
//	lab := netlab.New(t, netlab.Options{Hosts: 3, NAT: []int{2}})
//	h1, h2 := lab.Hosts[0], lab.Hosts[1]
//	dir, _ := h1.Dir()
//	weaver, err := h1.Start("weaver", nil, bin, "--state-dir", dir+"/state", "--socket", dir+"/weave.sock")
//	...
//	lab.Firewall(h1, h2)                        // all TCP and UDP between them dropped, both ways
//	loss, rtt, err := netlab.Ping(ctx, h1, h2.Addr, 3)
//	c, _ := h2.AddContainer("c1")               // namespace "<prefix>-h2-c1", for weavectl attach
//
// Outside tests, Build returns the same Lab; defer its Close.
package netlab
