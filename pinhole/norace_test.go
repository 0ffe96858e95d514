//go:build !race

package pinhole

const raceEnabled = false
