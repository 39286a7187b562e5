package redis

import (
	"context"
	"encoding/json"
	"fmt"

	goredis "github.com/redis/go-redis/v9"

	"github.com/labelpipe/labelpipe/pipeline/backend"
)

// PauseStore keeps the paused sinks in one hash, <prefix>paused, sink →
// JSON pause, shared by every replica on the Redis.
type PauseStore struct {
	client goredis.UniversalClient
	key    string
}

// NewPauseStore returns the pause store under prefix.
func NewPauseStore(client goredis.UniversalClient, prefix string) *PauseStore {
	return &PauseStore{client: client, key: prefix + "paused"}
}

// PauseStore shares the sinks' pauses between replicas.
func (b *Backend) PauseStore() backend.PauseStore { return NewPauseStore(b.client, b.cfg.KeyPrefix) }

// SetPause pauses sink, or resumes it when p is nil.
func (s *PauseStore) SetPause(ctx context.Context, sink string, p *backend.Pause) error {
	if p == nil {
		if err := s.client.HDel(ctx, s.key, sink).Err(); err != nil {
			return fmt.Errorf("resume %s: %w", sink, err)
		}
		return nil
	}
	raw, err := json.Marshal(p)
	if err != nil {
		return err
	}
	if err := s.client.HSet(ctx, s.key, sink, raw).Err(); err != nil {
		return fmt.Errorf("pause %s: %w", sink, err)
	}
	return nil
}

// Pauses returns every paused sink's pause.
func (s *PauseStore) Pauses(ctx context.Context) (map[string]backend.Pause, error) {
	all, err := s.client.HGetAll(ctx, s.key).Result()
	if err != nil {
		return nil, fmt.Errorf("read pauses: %w", err)
	}
	out := make(map[string]backend.Pause, len(all))
	for sink, raw := range all {
		var p backend.Pause
		_ = json.Unmarshal([]byte(raw), &p) // unreadable: paused, by nobody known
		out[sink] = p
	}
	return out, nil
}

var (
	_ backend.PauseStore = (*PauseStore)(nil)
	_ backend.Pauser     = (*Backend)(nil)
)
