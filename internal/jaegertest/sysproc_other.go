//go:build !linux

package jaegertest

import "os/exec"

// setSysProcAttr has no portable parent-death signal outside Linux.
func setSysProcAttr(*exec.Cmd) {}
