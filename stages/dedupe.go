package stages

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/redis/go-redis/v9"

	"github.com/labelpipe/labelpipe/pipeline"
)

// The dedupe stage answers 200 {"status":"duplicate"} for an export it has
// already accepted within `ttl`, naming the first export's id.
//
// The first sighting of a key reserves it with the export's id. If the
// export then cannot be published durably, the pipeline calls Release and
// the key is given back, so that the caller's retry is accepted rather than
// swallowed as a duplicate.
//
// The default key is a SHA-256 of (event, project, issue id, sorted element
// ids), so re-exporting the same elements of an issue is a duplicate and
// exporting a different selection is not. Payloads without an issue id are
// keyed by a SHA-256 of the whole payload. A `key` jq program replaces
// that; it sees `.` (the payload) and `$export` (id, event, project,
// issue_id and attrs, e.g. $export.attrs.webhook_id from the secret
// stage), and may yield null or "" to let an export through unchecked.
//
// The memory store is per process; replicas must share the redis store.
//
//	- type: dedupe
//	  store: redis
//	  ttl: 24h

// Dedupe store kinds and store-error policies.
const (
	StoreMemory = "memory"
	StoreRedis  = "redis"

	OnStoreErrorReject = "reject"
	OnStoreErrorAllow  = "allow"
)

// dedupeRetryAfter is the Retry-After sent when the store is unavailable.
const dedupeRetryAfter = 5 * time.Second

// DedupeConfig configures the dedupe stage.
type DedupeConfig struct {
	// Store keeps the keys: memory (default; this process only) or redis
	// (shared by replicas; needs redis.url).
	Store string `yaml:"store"`
	// TTL is how long a key is remembered; default 24h.
	TTL time.Duration `yaml:"ttl"`
	// Key is a jq program yielding the dedupe key; default a hash of
	// (event, project, issue id, sorted element ids).
	Key string `yaml:"key"`
	// KeyPrefix starts every Redis key; default "labelpipe:dedupe:".
	KeyPrefix string `yaml:"key_prefix"`
	// OnStoreError is what happens when the store fails: reject (default;
	// 503 with Retry-After, so the caller retries) or allow (log a warning
	// and pass the export unchecked).
	OnStoreError string `yaml:"on_store_error"`
}

// DedupeDefaults returns the dedupe stage's default config.
func DedupeDefaults() *DedupeConfig {
	return &DedupeConfig{
		Store:        StoreMemory,
		TTL:          24 * time.Hour,
		KeyPrefix:    "labelpipe:dedupe:",
		OnStoreError: OnStoreErrorReject,
	}
}

// Validate checks the config without I/O.
func (c *DedupeConfig) Validate() error {
	var errs []error
	switch c.Store {
	case StoreMemory, StoreRedis:
	default:
		errs = append(errs, pipeline.FieldErr("store", "unknown store %q (want memory or redis)", c.Store))
	}
	if c.TTL < time.Millisecond {
		errs = append(errs, pipeline.FieldErr("ttl", "must be ≥ 1ms"))
	}
	if c.Key != "" {
		if _, err := pipeline.CompileJQ(c.Key); err != nil {
			errs = append(errs, pipeline.FieldErr("key", "%v", err))
		}
	}
	switch c.OnStoreError {
	case OnStoreErrorReject, OnStoreErrorAllow:
	default:
		errs = append(errs, pipeline.FieldErr("on_store_error", "unknown policy %q (want reject or allow)", c.OnStoreError))
	}
	return errors.Join(errs...)
}

func buildDedupe(c *DedupeConfig, env pipeline.Env) (pipeline.Stage, error) {
	d := &Dedupe{
		name:   env.Name,
		attr:   pipeline.AttrDedupeKey + ":" + env.Name,
		allow:  c.OnStoreError == OnStoreErrorAllow,
		logger: env.Logger,
	}
	if d.logger == nil {
		d.logger = slog.New(slog.DiscardHandler)
	}
	if c.Key != "" {
		prog, err := pipeline.CompileJQ(c.Key)
		if err != nil {
			return nil, fmt.Errorf("key: %w", err)
		}
		d.key = prog
	}
	switch {
	case c.Store == StoreRedis && env.Offline:
		// A preview gives the verdict a first delivery gets, touching
		// nothing shared.
		d.store = NewMemoryStore(c.TTL)
	case c.Store == StoreRedis:
		if env.Redis == nil {
			return nil, errors.New("dedupe store redis needs redis.url in the config")
		}
		d.store = NewRedisStore(env.Redis, c.KeyPrefix, c.TTL)
	default:
		d.store = NewMemoryStore(c.TTL)
	}
	return d, nil
}

// Dedupe is the dedupe stage.
type Dedupe struct {
	name string
	// attr is this stage's own attribute for its key; AttrDedupeKey holds
	// the last dedupe stage's only, and a pipeline may have more than one.
	attr   string
	store  DedupeStore
	key    *pipeline.JQ // nil: the default key
	allow  bool
	logger *slog.Logger
}

// Process reserves the export's key, or answers duplicate when another
// export holds it.
func (d *Dedupe) Process(ctx context.Context, e *pipeline.Export) ([]*pipeline.Export, error) {
	key, err := d.keyOf(ctx, e)
	if err != nil {
		return nil, err
	}
	if key == "" {
		return []*pipeline.Export{e}, nil
	}
	holder, reserved, err := d.store.Reserve(ctx, key, e.ID)
	if err != nil {
		return d.storeFailed(ctx, e, err)
	}
	// holder == e.ID: the same export came through again (a redelivery);
	// it keeps its own reservation.
	if !reserved && holder != e.ID {
		return nil, pipeline.Duplicate(holder)
	}
	e.SetAttr(pipeline.AttrDedupeKey, key)
	e.SetAttr(d.attr, key)
	return []*pipeline.Export{e}, nil
}

// Preview gives Process's verdict without reserving anything.
func (d *Dedupe) Preview(ctx context.Context, e *pipeline.Export) ([]*pipeline.Export, error) {
	key, err := d.keyOf(ctx, e)
	if err != nil {
		return nil, err
	}
	if key == "" {
		return []*pipeline.Export{e}, nil
	}
	holder, held, err := d.store.Holder(ctx, key)
	if err != nil {
		return d.storeFailed(ctx, e, err)
	}
	if held && holder != e.ID {
		return nil, pipeline.Duplicate(holder)
	}
	return []*pipeline.Export{e}, nil
}

// storeFailed applies on_store_error.
func (d *Dedupe) storeFailed(ctx context.Context, e *pipeline.Export, err error) ([]*pipeline.Export, error) {
	if ctx.Err() != nil {
		return nil, fmt.Errorf("dedupe %s: %w", d.name, ctx.Err())
	}
	if d.allow {
		d.logger.WarnContext(ctx, "dedupe store unavailable; passing the export without a duplicate check",
			"export", e.ID, "error", err)
		return []*pipeline.Export{e}, nil
	}
	return nil, pipeline.Unavailable(dedupeRetryAfter, err,
		"Redis is unavailable, so duplicates cannot be checked; try again later")
}

// Release gives back the key e reserved, if e still holds it, so that a
// retry of an export that was not published is accepted.
func (d *Dedupe) Release(ctx context.Context, e *pipeline.Export) error {
	key := e.Attrs[d.attr]
	if key == "" {
		return nil
	}
	if err := d.store.Release(ctx, key, e.ID); err != nil {
		return fmt.Errorf("dedupe %s: release key: %w", d.name, err)
	}
	return nil
}

func (d *Dedupe) keyOf(ctx context.Context, e *pipeline.Export) (string, error) {
	if d.key == nil {
		return DefaultDedupeKey(e.Payload), nil
	}
	vs, err := d.key.Run(ctx, e.Payload, jqExport(e))
	if err != nil {
		if ctx.Err() != nil {
			return "", fmt.Errorf("dedupe %s: %w", d.name, ctx.Err())
		}
		return "", pipeline.Reject(http.StatusUnprocessableEntity, "dedupe %s: key program failed: %v", d.name, err)
	}
	switch {
	case len(vs) == 0 || vs[0] == nil:
		return "", nil
	case len(vs) > 1:
		return "", pipeline.Reject(http.StatusUnprocessableEntity, "dedupe %s: key program yielded %d values, want one", d.name, len(vs))
	}
	if s, ok := vs[0].(string); ok {
		return s, nil
	}
	b, err := json.Marshal(vs[0])
	if err != nil {
		return "", pipeline.Reject(http.StatusUnprocessableEntity, "dedupe %s: key is not JSON: %v", d.name, err)
	}
	return string(b), nil
}

// DefaultDedupeKey is the hex SHA-256 of (event, project, issue id, sorted
// element ids) of an issue payload, and of the whole payload otherwise.
func DefaultDedupeKey(payload any) string {
	h := sha256.New()
	m, _ := payload.(map[string]any)
	issue, _ := m["issue"].(map[string]any)
	issueID, _ := issue["id"].(string)
	if issueID == "" {
		// encoding/json sorts map keys, so equal payloads hash equally.
		b, _ := json.Marshal(payload)
		h.Write([]byte("payload\x00"))
		h.Write(b)
		return hex.EncodeToString(h.Sum(nil))
	}
	var ids []string
	elements, _ := issue["elements"].([]any)
	for _, el := range elements {
		elm, _ := el.(map[string]any)
		switch id := elm["element_id"].(type) {
		case string:
			ids = append(ids, id)
		case nil:
		default:
			b, _ := json.Marshal(id)
			ids = append(ids, string(b))
		}
	}
	slices.Sort(ids)
	event, _ := m["event"].(string)
	project, _ := m["project"].(string)
	// A JSON array keeps the parts apart: no separator can be forged.
	b, _ := json.Marshal([]any{event, project, issueID, ids})
	h.Write([]byte("issue\x00"))
	h.Write(b)
	return hex.EncodeToString(h.Sum(nil))
}

// DedupeStore remembers dedupe keys for a fixed time. It is also a
// watermill middleware.ExpiringKeyRepository, so it can back watermill's
// Deduplicator. All methods are safe for concurrent use.
type DedupeStore interface {
	// Reserve records key as held by id unless the key is already held.
	// It returns the holder's id and whether this call reserved the key.
	Reserve(ctx context.Context, key, id string) (holder string, reserved bool, err error)
	// Holder returns the id holding key, if any, and changes nothing.
	Holder(ctx context.Context, key string) (id string, held bool, err error)
	// Release forgets key if id still holds it.
	Release(ctx context.Context, key, id string) error
	// IsDuplicate reserves key and reports whether it was already held.
	IsDuplicate(ctx context.Context, key string) (bool, error)
}

// isDuplicateHolder is the holder IsDuplicate records; watermill has no id.
const isDuplicateHolder = "watermill"

// MemoryStore is a DedupeStore in this process's memory. Expired keys are
// never seen again and are swept out as new keys arrive, with no goroutine
// to stop. (Watermill's map repository expires only on a timer, cannot
// return the holder, cannot release a key, and leaks its timer goroutine.)
type MemoryStore struct {
	ttl time.Duration
	now func() time.Time

	mu        sync.Mutex
	keys      map[string]memoryEntry
	nextSweep time.Time
}

type memoryEntry struct {
	id      string
	expires time.Time
}

// NewMemoryStore returns an empty store remembering keys for ttl.
func NewMemoryStore(ttl time.Duration) *MemoryStore {
	return &MemoryStore{ttl: ttl, now: time.Now, keys: map[string]memoryEntry{}}
}

// Reserve implements DedupeStore.
func (s *MemoryStore) Reserve(_ context.Context, key, id string) (string, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if now.After(s.nextSweep) {
		for k, e := range s.keys {
			if !now.Before(e.expires) {
				delete(s.keys, k)
			}
		}
		// Sweeping every half ttl bounds memory to about 1.5 ttl of keys.
		s.nextSweep = now.Add(max(s.ttl/2, time.Second))
	}
	if e, ok := s.keys[key]; ok && now.Before(e.expires) {
		return e.id, false, nil
	}
	s.keys[key] = memoryEntry{id: id, expires: now.Add(s.ttl)}
	return id, true, nil
}

// Holder implements DedupeStore.
func (s *MemoryStore) Holder(_ context.Context, key string) (string, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.keys[key]; ok && s.now().Before(e.expires) {
		return e.id, true, nil
	}
	return "", false, nil
}

// Release implements DedupeStore.
func (s *MemoryStore) Release(_ context.Context, key, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.keys[key]; ok && e.id == id {
		delete(s.keys, key)
	}
	return nil
}

// IsDuplicate implements middleware.ExpiringKeyRepository.
func (s *MemoryStore) IsDuplicate(ctx context.Context, key string) (bool, error) {
	_, reserved, err := s.Reserve(ctx, key, isDuplicateHolder)
	return !reserved, err
}

// Len is the number of keys held, expired ones not yet swept included.
func (s *MemoryStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.keys)
}

// RedisStore is a DedupeStore in Redis, shared by every replica. Keys
// expire through Redis's own TTL.
type RedisStore struct {
	client redis.UniversalClient
	prefix string
	ttl    time.Duration
}

// NewRedisStore returns a store keeping keys as prefix+key for ttl. It does
// not own client.
func NewRedisStore(client redis.UniversalClient, prefix string, ttl time.Duration) *RedisStore {
	return &RedisStore{client: client, prefix: prefix, ttl: ttl}
}

// reserveScript sets the key unless it exists and returns {reserved,
// holder} in one atomic round trip.
var reserveScript = redis.NewScript(`
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, ARGV[1]}
end
return {0, redis.call('GET', KEYS[1])}
`)

// releaseScript deletes the key only if it still holds the given id, so a
// release never frees a key a later export has taken since.
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`)

// Reserve implements DedupeStore.
func (s *RedisStore) Reserve(ctx context.Context, key, id string) (string, bool, error) {
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

// Holder implements DedupeStore.
func (s *RedisStore) Holder(ctx context.Context, key string) (string, bool, error) {
	id, err := s.client.Get(ctx, s.prefix+key).Result()
	switch {
	case errors.Is(err, redis.Nil):
		return "", false, nil
	case err != nil:
		return "", false, fmt.Errorf("redis: read dedupe key: %w", err)
	}
	return id, true, nil
}

// Release implements DedupeStore.
func (s *RedisStore) Release(ctx context.Context, key, id string) error {
	if err := releaseScript.Run(ctx, s.client, []string{s.prefix + key}, id).Err(); err != nil {
		return fmt.Errorf("redis: release dedupe key: %w", err)
	}
	return nil
}

// IsDuplicate implements middleware.ExpiringKeyRepository.
func (s *RedisStore) IsDuplicate(ctx context.Context, key string) (bool, error) {
	_, reserved, err := s.Reserve(ctx, key, isDuplicateHolder)
	return !reserved, err
}

var (
	_ pipeline.Stage                   = (*Dedupe)(nil)
	_ pipeline.Releaser                = (*Dedupe)(nil)
	_ pipeline.Previewer               = (*Dedupe)(nil)
	_ DedupeStore                      = (*MemoryStore)(nil)
	_ DedupeStore                      = (*RedisStore)(nil)
	_ middleware.ExpiringKeyRepository = (*MemoryStore)(nil)
	_ middleware.ExpiringKeyRepository = (*RedisStore)(nil)
)
