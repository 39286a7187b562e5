package backend

import (
	"context"
	"time"
)

// Pause is an operator's pause of one sink: while it holds, the sink's
// queue waits and no delivery is attempted.
type Pause struct {
	// By says who asked (the admin credential used and the peer address).
	By string `json:"by"`
	// At is when the pause began.
	At time.Time `json:"at"`
}

// PauseStore keeps which sinks an operator paused.
type PauseStore interface {
	// SetPause pauses sink with p, or resumes it when p is nil.
	SetPause(ctx context.Context, sink string, p *Pause) error
	// Pauses returns every paused sink's pause.
	Pauses(ctx context.Context) (map[string]Pause, error)
}

// Pauser is implemented by a Backend whose queues several replicas share,
// so that they share the pauses too. Without it each process keeps its
// own.
type Pauser interface {
	PauseStore() PauseStore
}
