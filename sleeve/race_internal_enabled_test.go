//go:build race

package sleeve

// The race detector makes allocation counts meaningless (race_enabled_test.go is the
// external test package's).
const internalRaceEnabled = true
