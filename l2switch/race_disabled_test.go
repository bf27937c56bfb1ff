//go:build !race

package l2switch

const raceEnabled = false
