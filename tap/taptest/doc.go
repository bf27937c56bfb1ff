// Package taptest provides an in-memory tap.Device for tests that need no root.
package taptest
