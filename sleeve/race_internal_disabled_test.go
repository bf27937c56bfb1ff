//go:build !race

package sleeve

const internalRaceEnabled = false
