//go:build race

package testutil

// RaceEnabled is true when the binary is built with -race: tests that measure scale or
// speed size themselves down under its 5-20x slowdown instead of skipping.
const RaceEnabled = true
