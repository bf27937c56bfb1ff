// Package taptest provides an in-memory tap.Device for tests that need no root: a standalone
// device whose frames tests inject and collect, or a pair wired back to back.
package taptest
