package backend

import (
	"context"
	"crypto/sha256"
	"time"
)

// Session is one console sign-in.
type Session struct {
	// Expires is when the session ends.
	Expires time.Time `json:"expires"`
	// Token is the SHA-256 of the admin token the session was made with:
	// a rotated token ends every session made with the old one.
	Token [sha256.Size]byte `json:"token"`
}

// SessionStore keeps console sessions by the SHA-256 of their cookie's
// value (never the value itself), each until it expires.
type SessionStore interface {
	// StartSession stores s under id until s.Expires.
	StartSession(ctx context.Context, id [sha256.Size]byte, s Session) error
	// Session returns id's session; ok is false when there is none live.
	Session(ctx context.Context, id [sha256.Size]byte) (s Session, ok bool, err error)
	// EndSession forgets id's session (signing out).
	EndSession(ctx context.Context, id [sha256.Size]byte) error
}

// SessionKeeper is implemented by a Backend shared by several replicas,
// so that a browser signed in on one is signed in on all (behind a load
// balancer). Without it each process keeps its own sessions.
type SessionKeeper interface {
	SessionStore() SessionStore
}
