//go:build race

package frame

// The race detector makes sync.Pool drop items at random, so allocation budgets do not hold.
const raceEnabled = true
