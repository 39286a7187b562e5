package redis

import (
	"context"
	"errors"
	"fmt"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/labelpipe/labelpipe/pipeline/backend"
)

// DedupeStore keeps dedupe keys in Redis, shared by every replica. Keys
// expire through Redis's own TTL.
type DedupeStore struct {
	client goredis.UniversalClient
	prefix string
	ttl    time.Duration
}

// NewDedupeStore returns a store keeping keys as prefix+key for ttl. It
// does not own client.
func NewDedupeStore(client goredis.UniversalClient, prefix string, ttl time.Duration) *DedupeStore {
	return &DedupeStore{client: client, prefix: prefix, ttl: ttl}
}

// reserveScript sets the key unless it exists and returns {reserved,
// holder} in one atomic round trip.
var reserveScript = goredis.NewScript(`
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, ARGV[1]}
end
return {0, redis.call('GET', KEYS[1])}
`)

// releaseScript deletes the key only if it still holds the given id, so a
// release never frees a key a later export has taken since.
var releaseScript = goredis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`)

// Reserve implements backend.DedupeStore.
func (s *DedupeStore) Reserve(ctx context.Context, key, id string) (string, bool, error) {
	ms := max(s.ttl.Milliseconds(), 1)
	res, err := reserveScript.Run(ctx, s.client, []string{s.prefix + key}, id, ms).Slice()
	if err != nil {
		return "", false, fmt.Errorf("redis: reserve dedupe key: %w", err)
	}
	if len(res) != 2 {
		return "", false, fmt.Errorf("redis: reserve dedupe key: unexpected reply %v", res)
	}
	reserved, _ := res[0].(int64)
	holder, _ := res[1].(string)
	return holder, reserved == 1, nil
}

// Holder implements backend.DedupeStore.
func (s *DedupeStore) Holder(ctx context.Context, key string) (string, bool, error) {
	id, err := s.client.Get(ctx, s.prefix+key).Result()
	switch {
	case errors.Is(err, goredis.Nil):
		return "", false, nil
	case err != nil:
		return "", false, fmt.Errorf("redis: read dedupe key: %w", err)
	}
	return id, true, nil
}

// Release implements backend.DedupeStore.
func (s *DedupeStore) Release(ctx context.Context, key, id string) error {
	if err := releaseScript.Run(ctx, s.client, []string{s.prefix + key}, id).Err(); err != nil {
		return fmt.Errorf("redis: release dedupe key: %w", err)
	}
	return nil
}

var _ backend.DedupeStore = (*DedupeStore)(nil)
