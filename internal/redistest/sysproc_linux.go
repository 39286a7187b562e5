package redistest

import (
	"os/exec"
	"syscall"
)

// setSysProcAttr makes the kernel kill redis-server if the test binary dies
// without running its cleanups (a panic in another goroutine, a timeout),
// so no server outlives its test.
func setSysProcAttr(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
