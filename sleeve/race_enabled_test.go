//go:build race

package sleeve_test

// The race detector makes allocation counts meaningless.
const raceEnabled = true
