package jaegertest

import (
	"os/exec"
	"syscall"
)

// setSysProcAttr makes the kernel kill Jaeger if the test binary dies
// without running its cleanups (a panic, a timeout), so no Jaeger outlives
// its test.
func setSysProcAttr(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
