//go:build !linux

package vmlab

import "os/exec"

// setDeathSignal: only Linux has a parent-death signal; the VM lab runs only there.
func setDeathSignal(*exec.Cmd) {}
