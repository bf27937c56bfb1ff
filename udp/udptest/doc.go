// Package udptest provides in-memory udp.Binds for tests that need no root: a cross-wired
// pair, or a Network of any number of binds with per-direction loss, blocking and path MTU,
// which is enough to test relaying through a middle peer.
package udptest
