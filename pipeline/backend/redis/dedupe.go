package redis

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/labelpipe/labelpipe/pipeline/backend"
)

// DedupeStore keeps dedupe keys in Redis, shared by every replica. A key
// prefix+key holds "?<id>" while its hold is provisional and "<id>" once
// confirmed; both expire through Redis's own TTL (hold, then ttl).
type DedupeStore struct {
	client    goredis.UniversalClient
	prefix    string
	ttl, hold time.Duration
}

// NewDedupeStore returns a store keeping keys as prefix+key, provisionally
// for hold and for ttl once confirmed. It does not own client.
func NewDedupeStore(client goredis.UniversalClient, prefix string, ttl, hold time.Duration) *DedupeStore {
	return &DedupeStore{client: client, prefix: prefix, ttl: ttl, hold: hold}
}

// provisional marks a hold that is not confirmed yet.
const provisional = "?"

// reserveScript sets the key unless it exists and returns {reserved,
// value} in one atomic round trip.
var reserveScript = goredis.NewScript(`
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, ARGV[1]}
end
return {0, redis.call('GET', KEYS[1])}
`)

// confirmScript makes a provisional hold of ARGV[1] final for ARGV[2] ms.
// It answers 1 when the key is (now) confirmed for that id, 0 when another
// export holds it or it lapsed.
var confirmScript = goredis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v == '?' .. ARGV[1] or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
`)

// releaseScript deletes the key only if the given id holds it, so a
// release never frees a key a later export has taken since.
var releaseScript = goredis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v == '?' .. ARGV[1] or v == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`)

func hold(v string) backend.Hold {
	if id, ok := strings.CutPrefix(v, provisional); ok {
		return backend.Hold{ID: id}
	}
	return backend.Hold{ID: v, Confirmed: true}
}

// Reserve implements backend.DedupeStore.
func (s *DedupeStore) Reserve(ctx context.Context, key, id string) (backend.Hold, bool, error) {
	ms := max(s.hold.Milliseconds(), 1)
	res, err := reserveScript.Run(ctx, s.client, []string{s.prefix + key}, provisional+id, ms).Slice()
	if err != nil {
		return backend.Hold{}, false, fmt.Errorf("redis: reserve dedupe key: %w", err)
	}
	if len(res) != 2 {
		return backend.Hold{}, false, fmt.Errorf("redis: reserve dedupe key: unexpected reply %v", res)
	}
	reserved, _ := res[0].(int64)
	v, _ := res[1].(string)
	return hold(v), reserved == 1, nil
}

// Confirm implements backend.DedupeStore.
func (s *DedupeStore) Confirm(ctx context.Context, key, id string) error {
	ms := max(s.ttl.Milliseconds(), 1)
	n, err := confirmScript.Run(ctx, s.client, []string{s.prefix + key}, id, ms).Int()
	switch {
	case err != nil:
		return fmt.Errorf("redis: confirm dedupe key: %w", err)
	case n != 1:
		return backend.ErrHoldLost
	}
	return nil
}

// Holder implements backend.DedupeStore.
func (s *DedupeStore) Holder(ctx context.Context, key string) (backend.Hold, bool, error) {
	v, err := s.client.Get(ctx, s.prefix+key).Result()
	switch {
	case errors.Is(err, goredis.Nil):
		return backend.Hold{}, false, nil
	case err != nil:
		return backend.Hold{}, false, fmt.Errorf("redis: read dedupe key: %w", err)
	}
	return hold(v), true, nil
}

// Release implements backend.DedupeStore.
func (s *DedupeStore) Release(ctx context.Context, key, id string) error {
	if err := releaseScript.Run(ctx, s.client, []string{s.prefix + key}, id).Err(); err != nil {
		return fmt.Errorf("redis: release dedupe key: %w", err)
	}
	return nil
}

var _ backend.DedupeStore = (*DedupeStore)(nil)
