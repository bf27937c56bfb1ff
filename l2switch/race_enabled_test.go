//go:build race

package l2switch

// The race detector makes allocation counts meaningless.
const raceEnabled = true
