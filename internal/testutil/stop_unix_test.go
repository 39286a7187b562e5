//go:build unix

package testutil_test

import (
	"bufio"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/internal/testutil"
)

func TestStop(t *testing.T) {
	tests := []struct {
		name   string
		script string
		// want is the signal the process must have died of.
		want syscall.Signal
	}{
		{"exits on the signal", "echo ready; exec sleep 60", syscall.SIGTERM},
		// An ignored disposition survives exec, so sleep ignores SIGTERM too.
		{"ignores the signal and is killed", `trap "" TERM; echo ready; exec sleep 60`, syscall.SIGKILL},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command("sh", "-c", tt.script)
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			// The trap is set once the script prints ready.
			if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "ready\n" {
				_ = cmd.Process.Kill()
				t.Fatalf("child said %q, %v", line, err)
			}
			done := make(chan struct{})
			go func() {
				_ = cmd.Wait()
				close(done)
			}()

			testutil.Stop(cmd.Process, done, syscall.SIGTERM, 100*time.Millisecond)
			select {
			case <-done:
			default:
				t.Fatal("Stop returned before the process exited")
			}
			ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
			if !ok || !ws.Signaled() || ws.Signal() != tt.want {
				t.Fatalf("process ended with %v, want killed by %v", cmd.ProcessState, tt.want)
			}
		})
	}
}
