package redis

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/labelpipe/labelpipe/pipeline/backend"
)

// Ledger keeps, per request (backend.DeliveryKey) and shared by all
// replicas, <prefix>attempts:<key> while it is being retried and
// <prefix>delivered:<key> once it succeeded ("<attempts> <unix ms>"; "1"
// from before the two were kept), both expiring after ttl;
// <prefix>steps:<key>, a JSON object of the steps a multi-step sink
// checkpointed, expiring ttl after the last step was saved; and
// <prefix>lease:<key> while one copy of the request is being sent (the
// holder's random token, PX the lease's ttl).
type Ledger struct {
	client goredis.UniversalClient
	prefix string // of the delivered keys
	tries  string // of the attempts keys
	steps  string // of the steps keys
	leases string // of the lease keys
	ttl    time.Duration
	held   sync.Map // lease key -> *heldLease, the leases this process holds
}

// NewLedger remembers deliveries for ttl; ttl ≤ 0 keeps them forever.
func NewLedger(client goredis.UniversalClient, prefix string, ttl time.Duration) *Ledger {
	return &Ledger{client: client, prefix: prefix + "delivered:", tries: prefix + "attempts:", steps: prefix + "steps:",
		leases: prefix + "lease:", ttl: max(ttl, 0)}
}

// renewLease and releaseLease touch a lease only while the token is still
// the caller's: a lease that lapsed and was taken by another copy is left
// to it.
var (
	renewLease   = goredis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("PEXPIRE", KEYS[1], ARGV[2]) end return 0`)
	releaseLease = goredis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end return 0`)
)

// Lease is SET NX PX: one round trip when the request is free. The lease
// is renewed every ttl/3 while ctx lasts and it is held. Record ends it in
// its own round trip, so a delivered request costs no release.
func (l *Ledger) Lease(ctx context.Context, key backend.DeliveryKey, ttl time.Duration) (func(), bool, error) {
	k := l.leases + key.String()
	h := &heldLease{token: strconv.FormatUint(rand.Uint64(), 36)}
	ok, err := l.client.SetNX(ctx, k, h.token, ttl).Result()
	if err != nil {
		return func() {}, false, fmt.Errorf("ledger lease: %w", err)
	}
	if !ok {
		return func() {}, false, nil
	}
	var renew func()
	renew = func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.done || ctx.Err() != nil {
			return
		}
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ttl/3)
		defer cancel()
		// A failed renewal is tried again at the next tick; the lease
		// lapses only if renewals keep failing for ttl.
		_ = renewLease.Run(rctx, l.client, []string{k}, h.token, ttl.Milliseconds()).Err()
		h.timer = time.AfterFunc(ttl/3, renew)
	}
	h.mu.Lock()
	h.timer = time.AfterFunc(ttl/3, renew)
	h.mu.Unlock()
	l.held.Store(k, h)
	release := func() {
		if !h.end() {
			return
		}
		l.held.CompareAndDelete(k, h)
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), redisOpTimeout)
		defer cancel()
		// On failure the lease lapses after ttl.
		_ = releaseLease.Run(rctx, l.client, []string{k}, h.token).Err()
	}
	return release, true, nil
}

// heldLease is a lease this process holds.
type heldLease struct {
	token string
	mu    sync.Mutex
	done  bool
	timer *time.Timer
}

// end stops the renewals; it reports whether the lease was still held.
func (h *heldLease) end() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.done {
		return false
	}
	h.done = true
	h.timer.Stop()
	return true
}

// Lookup reads the delivered, attempts and steps keys in one round trip.
// A sink that saves no step costs one more key in that MGET, nothing else.
func (l *Ledger) Lookup(ctx context.Context, key backend.DeliveryKey) (backend.DeliveryRecord, error) {
	k := key.String()
	vs, err := l.client.MGet(ctx, l.prefix+k, l.tries+k, l.steps+k).Result()
	if err != nil {
		return backend.DeliveryRecord{}, fmt.Errorf("ledger: %w", err)
	}
	return decodeRecord(k, vs)
}

// LookupMany reads every key's delivered, attempts, steps and lease keys
// in one MGET.
func (l *Ledger) LookupMany(ctx context.Context, keys []backend.DeliveryKey) ([]backend.DeliveryRecord, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	names := make([]string, 0, 4*len(keys))
	for _, key := range keys {
		k := key.String()
		names = append(names, l.prefix+k, l.tries+k, l.steps+k, l.leases+k)
	}
	vs, err := l.client.MGet(ctx, names...).Result()
	if err != nil {
		return nil, fmt.Errorf("ledger: %w", err)
	}
	out := make([]backend.DeliveryRecord, len(keys))
	for i, key := range keys {
		v := vs[4*i : 4*i+4]
		if out[i], err = decodeRecord(key.String(), v[:3]); err != nil {
			return nil, err
		}
		out[i].Leased = v[3] != nil
	}
	return out, nil
}

// decodeRecord reads the values of a record's delivered, attempts and
// steps keys.
func decodeRecord(k string, vs []any) (backend.DeliveryRecord, error) {
	var r backend.DeliveryRecord
	if s, ok := vs[2].(string); ok {
		if err := json.Unmarshal([]byte(s), &r.Steps); err != nil {
			return backend.DeliveryRecord{}, fmt.Errorf("ledger: steps of %s: %w", k, err)
		}
		if len(r.Steps) == 0 {
			r.Steps = nil // cjson writes an empty object as {}; never saved empty, but be exact
		}
	}
	if s, ok := vs[0].(string); ok {
		r.Delivered = true
		if n, ms, ok := strings.Cut(s, " "); ok {
			var err1, err2 error
			var at int64
			r.Attempts, err1 = strconv.Atoi(n)
			at, err2 = strconv.ParseInt(ms, 10, 64)
			if err := errors.Join(err1, err2); err != nil {
				return backend.DeliveryRecord{}, fmt.Errorf("ledger: delivered record of %s: %q: %w", k, s, err)
			}
			r.DeliveredAt = time.UnixMilli(at)
		}
		return r, nil
	}
	if s, ok := vs[1].(string); ok {
		var ms int64
		if _, err := fmt.Sscanf(s, "%d %d %d", &r.Attempts, &r.Spent, &ms); err != nil {
			return backend.DeliveryRecord{}, fmt.Errorf("ledger: attempts of %s: %q: %w", k, s, err)
		}
		r.Elapsed = time.Duration(ms) * time.Millisecond
	}
	return r, nil
}

// SaveAttempts stores "<attempts> <spent> <elapsed ms>" under
// <prefix>attempts:<key>, expiring with the delivered keys' ttl.
func (l *Ledger) SaveAttempts(ctx context.Context, key backend.DeliveryKey, r backend.DeliveryRecord) error {
	v := fmt.Sprintf("%d %d %d", r.Attempts, r.Spent, r.Elapsed.Milliseconds())
	if err := l.client.Set(ctx, l.tries+key.String(), v, l.ttl).Err(); err != nil {
		return fmt.Errorf("ledger: %w", err)
	}
	return nil
}

// saveStep merges one step into the steps key's JSON object and sets its
// expiry, atomically, so that two steps saved at once both stay.
var saveStep = goredis.NewScript(`
local cur = redis.call("GET", KEYS[1])
local steps = {}
if cur then steps = cjson.decode(cur) end
steps[ARGV[1]] = ARGV[2]
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  return redis.call("SET", KEYS[1], cjson.encode(steps), "PX", ttl)
end
return redis.call("SET", KEYS[1], cjson.encode(steps))`)

// SaveStep sets one step under <prefix>steps:<key> in one round trip;
// only a sink that checkpoints pays it.
func (l *Ledger) SaveStep(ctx context.Context, key backend.DeliveryKey, name, value string) error {
	if err := saveStep.Run(ctx, l.client, []string{l.steps + key.String()}, name, value, l.ttl.Milliseconds()).Err(); err != nil {
		return fmt.Errorf("ledger: save step %s: %w", name, err)
	}
	return nil
}

// Record sets the delivered key to "<attempts> <unix ms>" and drops the
// attempts and lease keys, in one round trip. A copy that then takes the
// lease sees the delivered key. The steps key stays until its own expiry.
func (l *Ledger) Record(ctx context.Context, key backend.DeliveryKey, r backend.DeliveryRecord) error {
	k := key.String()
	at := r.DeliveredAt
	if at.IsZero() {
		at = time.Now()
	}
	var buf [48]byte
	v := string(strconv.AppendInt(append(strconv.AppendInt(buf[:0], int64(r.Attempts), 10), ' '), at.UnixMilli(), 10))
	if h, ok := l.held.LoadAndDelete(l.leases + k); ok {
		h.(*heldLease).end()
	}
	_, err := l.client.Pipelined(ctx, func(p goredis.Pipeliner) error {
		p.Set(ctx, l.prefix+k, v, l.ttl)
		p.Del(ctx, l.tries+k)
		p.Del(ctx, l.leases+k)
		return nil
	})
	if err != nil {
		return fmt.Errorf("ledger: %w", err)
	}
	return nil
}

var _ backend.Ledger = (*Ledger)(nil)
