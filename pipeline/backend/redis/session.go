package redis

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	goredis "github.com/redis/go-redis/v9"

	"github.com/labelpipe/labelpipe/pipeline/backend"
)

// SessionStore keeps console sessions in <prefix>session:<hex id>, each a
// JSON backend.Session expiring with it, shared by every replica.
type SessionStore struct {
	client goredis.UniversalClient
	prefix string
}

// NewSessionStore returns the session store under prefix.
func NewSessionStore(client goredis.UniversalClient, prefix string) *SessionStore {
	return &SessionStore{client: client, prefix: prefix + "session:"}
}

// SessionStore shares console sessions between replicas.
func (b *Backend) SessionStore() backend.SessionStore {
	return NewSessionStore(b.client, b.cfg.KeyPrefix)
}

func (s *SessionStore) key(id [sha256.Size]byte) string { return s.prefix + hex.EncodeToString(id[:]) }

// StartSession stores sess under id until it expires.
func (s *SessionStore) StartSession(ctx context.Context, id [sha256.Size]byte, sess backend.Session) error {
	raw, err := json.Marshal(sess)
	if err != nil {
		return err
	}
	if err := s.client.Do(ctx, "SET", s.key(id), raw, "PXAT", sess.Expires.UnixMilli()).Err(); err != nil {
		return fmt.Errorf("start console session: %w", err)
	}
	return nil
}

// Session returns id's session, if it is live.
func (s *SessionStore) Session(ctx context.Context, id [sha256.Size]byte) (backend.Session, bool, error) {
	raw, err := s.client.Get(ctx, s.key(id)).Bytes()
	if errors.Is(err, goredis.Nil) {
		return backend.Session{}, false, nil
	}
	if err != nil {
		return backend.Session{}, false, fmt.Errorf("read console session: %w", err)
	}
	var sess backend.Session
	if err := json.Unmarshal(raw, &sess); err != nil {
		return backend.Session{}, false, fmt.Errorf("read console session: %w", err)
	}
	return sess, true, nil
}

// EndSession forgets id's session.
func (s *SessionStore) EndSession(ctx context.Context, id [sha256.Size]byte) error {
	if err := s.client.Del(ctx, s.key(id)).Err(); err != nil {
		return fmt.Errorf("end console session: %w", err)
	}
	return nil
}
