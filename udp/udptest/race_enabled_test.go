//go:build race

package udptest

// The race detector makes sync.Pool drop items at random, so allocation budgets do not hold.
const raceEnabled = true
