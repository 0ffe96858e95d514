//go:build race

package pinhole

const raceEnabled = true
