// Package field holds the one validation error type every config struct
// returns: the stage and sink options, the sinks' resilience policy and the
// core's own sections. It names the offending field so that the config
// loader can point at its line and column. It is a leaf package, so that
// packages the core imports (resilience) can use it too.
package field

import "fmt"

// Error is a validation error naming a field by its dotted path below the
// stage or sink, for example "retry.max_attempts" or "secrets[0]".
type Error struct {
	// Field is the dotted path of the field below the entry.
	Field string
	// Msg says what is wrong with it.
	Msg string
}

func (e *Error) Error() string { return e.Field + ": " + e.Msg }

// Errorf builds an *Error for field.
func Errorf(field, format string, args ...any) error {
	return &Error{Field: field, Msg: fmt.Sprintf(format, args...)}
}
