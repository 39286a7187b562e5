//go:build failpoints

// Package failpoint kills the process at a named point, for tests that
// must crash labelpipe at its most dangerous moments (after a dedupe
// reservation and before the publish, after the publish and before the
// answer, mid-delivery). It is compiled in only under the failpoints
// build tag; without it Hit is an empty function, never present in a
// production binary.
package failpoint

import "os"

// Enabled says this binary was built with failpoints.
const Enabled = true

// Hit kills the process with SIGKILL (no deferred function, no drain) when
// LABELPIPE_FAILPOINT names this point.
func Hit(name string) {
	if os.Getenv("LABELPIPE_FAILPOINT") != name {
		return
	}
	p, err := os.FindProcess(os.Getpid())
	if err == nil {
		_ = p.Kill()
	}
	select {} // the kill is asynchronous: nothing after the point may run
}
