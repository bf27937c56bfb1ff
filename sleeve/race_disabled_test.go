//go:build !race

package sleeve_test

const raceEnabled = false
