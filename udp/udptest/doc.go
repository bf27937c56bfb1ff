// Package udptest provides cross-wired in-memory udp.Bind pairs for tests that need no root.
package udptest
