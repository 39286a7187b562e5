package redis

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"
)

// The redis breaker store lets every replica's DistributedCircuitBreaker
// for a sink read and write one shared state, <prefix><gobreaker key>.
//
// Its lock is SET key token NX PX breakerLockTTL, released by a script
// that deletes the key only if it still holds our token. gobreaker holds
// the lock for a whole Execute; package resilience only records outcomes
// in it (a read-modify-write of the state, a few round trips), never a
// vendor request. So a short TTL is enough, and a replica killed while
// holding the lock blocks the others (and its own restart) for at most
// breakerLockTTL, well inside gobreaker's 5s wait for the lock.
const (
	breakerLockTTL  = 2 * time.Second
	breakerLockWait = time.Second // Lock gives up after this; gobreaker retries for 5s
)

// ErrBreakerLocked is returned by Lock when another holder kept the lock
// for the whole wait.
var ErrBreakerLocked = errors.New("breaker store: lock is held")

// BreakerStore is a gobreaker.SharedDataStore in Redis: one circuit
// breaker state per sink, shared by every replica.
type BreakerStore struct {
	client goredis.UniversalClient
	prefix string
	// ctx carries the caller's values (its span, so that the commands are
	// traced in the delivery they serve); never its cancellation.
	ctx   context.Context
	locks *lockTokens
}

type lockTokens struct {
	mu     sync.Mutex
	tokens map[string]string // lock key -> our token while we hold it
}

// NewBreakerStore shares circuit-breaker state through Redis.
func NewBreakerStore(client goredis.UniversalClient, prefix string) gobreaker.SharedDataStore {
	return &BreakerStore{client: client, prefix: prefix, ctx: quiet(context.Background()), locks: &lockTokens{tokens: map[string]string{}}}
}

// WithContext returns the store making its commands with ctx's values
// (resilience.ContextStore); the locks it holds are the store's.
func (s *BreakerStore) WithContext(ctx context.Context) gobreaker.SharedDataStore {
	c := *s
	c.ctx = quiet(context.WithoutCancel(ctx)) // traced when ctx carries a span
	return &c
}

// Lock takes the named lock, polling for up to breakerLockWait.
func (s *BreakerStore) Lock(name string) error {
	var b [16]byte
	_, _ = rand.Read(b[:])
	token := hex.EncodeToString(b[:])
	ctx, cancel := context.WithTimeout(s.ctx, breakerLockWait)
	defer cancel()
	held := false // someone else had it at least once
	for wait := 2 * time.Millisecond; ; wait = min(2*wait, 50*time.Millisecond) {
		ok, err := s.client.SetNX(ctx, s.prefix+name, token, breakerLockTTL).Result()
		if err != nil {
			if held && ctx.Err() != nil {
				return ErrBreakerLocked
			}
			return fmt.Errorf("breaker store: lock %s: %w", name, err)
		}
		held = true
		if ok {
			s.locks.mu.Lock()
			s.locks.tokens[name] = token
			s.locks.mu.Unlock()
			return nil
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ErrBreakerLocked
		case <-t.C:
		}
	}
}

// Unlock releases the lock if we still hold it. A lock that expired under
// us is not an error: the state was already written, and failing here
// would turn a finished vendor request into a failure.
func (s *BreakerStore) Unlock(name string) error {
	s.locks.mu.Lock()
	token, ok := s.locks.tokens[name]
	delete(s.locks.tokens, name)
	s.locks.mu.Unlock()
	if !ok {
		return nil
	}
	ctx, cancel := context.WithTimeout(s.ctx, redisOpTimeout)
	defer cancel()
	if err := unlockScript.Run(ctx, s.client, []string{s.prefix + name}, token).Err(); err != nil {
		return fmt.Errorf("breaker store: unlock %s: %w", name, err)
	}
	return nil
}

var unlockScript = goredis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)

// GetData returns the stored state, or nothing when there is none.
func (s *BreakerStore) GetData(name string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(s.ctx, redisOpTimeout)
	defer cancel()
	data, err := s.client.Get(ctx, s.prefix+name).Bytes()
	if errors.Is(err, goredis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("breaker store: get %s: %w", name, err)
	}
	return data, nil
}

// SetData stores the state without expiry: gobreaker fails Execute when
// the state is missing.
func (s *BreakerStore) SetData(name string, data []byte) error {
	ctx, cancel := context.WithTimeout(s.ctx, redisOpTimeout)
	defer cancel()
	if err := s.client.Set(ctx, s.prefix+name, data, 0).Err(); err != nil {
		return fmt.Errorf("breaker store: set %s: %w", name, err)
	}
	return nil
}

var _ gobreaker.SharedDataStore = (*BreakerStore)(nil)
