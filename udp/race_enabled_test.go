//go:build race

package udp

// The race detector makes sync.Pool drop items at random, so allocation budgets do not hold.
const raceEnabled = true
