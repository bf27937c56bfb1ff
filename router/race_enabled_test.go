//go:build race

package router

// The race detector makes allocation counts meaningless.
const raceEnabled = true
