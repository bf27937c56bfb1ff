package vmlab

import (
	"os/exec"
	"syscall"
)

// setDeathSignal makes the kernel kill QEMU if the test process dies first (go test's timeout
// panic, an interrupt), so no VM outlives its test.
func setDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
