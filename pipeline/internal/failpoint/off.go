//go:build !failpoints

// Package failpoint kills the process at a named point, for crash tests
// built with the failpoints tag; in this build Hit does nothing.
package failpoint

// Enabled says this binary was built with failpoints.
const Enabled = false

// Hit does nothing without the failpoints build tag.
func Hit(string) {}
