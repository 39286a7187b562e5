package stages

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"golang.org/x/time/rate"

	"github.com/labelpipe/labelpipe/pipeline"
)

// The rate_limit stage caps how many webhooks are accepted per second,
// with a token bucket (golang.org/x/time/rate) in this process. Past the
// limit it answers 429 with Retry-After, so a runaway caller is told to
// slow down instead of filling the queues. With a jq key, each distinct
// value (a project, say) gets its own bucket.
//
// At most max_keys buckets are kept, least recently used first out, but a
// bucket is only dropped once it has refilled completely: dropping it then
// forgets nothing. While every kept bucket is still refilling, new keys
// share one overflow bucket (same rate and burst). So a caller cycling
// through many key values can neither reset another key's bucket nor get
// more than one extra bucket's worth through.
//
//	- type: rate_limit
//	  per_second: 5
//	  burst: 20
//	  key: .project

// RateLimitConfig configures the rate_limit stage.
type RateLimitConfig struct {
	// PerSecond is the steady rate of webhooks let through, per bucket.
	// Required, > 0.
	PerSecond float64 `yaml:"per_second"`
	// Burst is how many may pass at once; default PerSecond rounded up.
	Burst int `yaml:"burst"`
	// Key is an optional jq program; each distinct value it yields gets
	// its own bucket. Empty: one bucket for every caller.
	Key string `yaml:"key"`
	// MaxKeys bounds how many buckets are kept; when full, a new key takes
	// the place of a refilled bucket or else shares the overflow bucket.
	// Default 10000.
	MaxKeys int `yaml:"max_keys"`
}

// RateLimitDefaults returns the rate_limit stage's default config.
func RateLimitDefaults() *RateLimitConfig { return &RateLimitConfig{MaxKeys: 10000} }

// Validate checks the numbers and compiles the key program.
func (c *RateLimitConfig) Validate() error {
	var errs []error
	if c.PerSecond <= 0 {
		errs = append(errs, pipeline.FieldErr("per_second", "must be > 0"))
	}
	if c.Burst < 0 {
		errs = append(errs, pipeline.FieldErr("burst", "must be ≥ 0"))
	}
	if c.MaxKeys < 1 {
		errs = append(errs, pipeline.FieldErr("max_keys", "must be ≥ 1"))
	}
	if c.Key != "" {
		if _, err := pipeline.CompileJQ(c.Key); err != nil {
			errs = append(errs, pipeline.FieldErr("key", "%v", err))
		}
	}
	return errors.Join(errs...)
}

func buildRateLimit(c *RateLimitConfig, env pipeline.Env) (pipeline.Stage, error) {
	burst := c.Burst
	if burst == 0 {
		burst = int(math.Ceil(c.PerSecond))
	}
	buckets, err := simplelru.NewLRU[string, *rate.Limiter](c.MaxKeys, nil)
	if err != nil {
		return nil, fmt.Errorf("max_keys: %w", err)
	}
	r := &RateLimit{name: env.Name, limit: rate.Limit(c.PerSecond), burst: burst, maxKeys: c.MaxKeys,
		buckets: buckets, overflow: rate.NewLimiter(rate.Limit(c.PerSecond), burst), now: time.Now}
	if c.Key != "" {
		prog, err := pipeline.CompileJQ(c.Key)
		if err != nil {
			return nil, fmt.Errorf("key: %w", err)
		}
		r.key = prog
	}
	return r, nil
}

// RateLimit is the rate_limit stage.
type RateLimit struct {
	name    string
	limit   rate.Limit
	burst   int
	key     *pipeline.JQ
	maxKeys int

	mu       sync.Mutex
	buckets  *simplelru.LRU[string, *rate.Limiter]
	overflow *rate.Limiter // shared by new keys while every bucket is refilling
	now      func() time.Time
}

// Process lets the export through if its bucket has a token, and answers
// 429 with the wait until the next one otherwise.
func (r *RateLimit) Process(ctx context.Context, e *pipeline.Export) error {
	key := ""
	if r.key != nil {
		v, err := r.key.Run(ctx, e.Payload, e.Info())
		if err != nil {
			return pipeline.Reject(http.StatusUnprocessableEntity, "rate_limit %s: key failed: %v", r.name, err)
		}
		key = fmt.Sprint(v)
	}
	now := r.now()
	b, shared := r.bucket(key, now)
	res := b.ReserveN(now, 1)
	if wait := res.DelayFrom(now); wait > 0 {
		// Not taken: the token stays for the caller that waits its turn.
		res.CancelAt(now)
		why := fmt.Sprintf("more than %g webhooks a second", float64(r.limit))
		if shared {
			why += fmt.Sprintf(" across new keys (all %d key buckets are in use)", r.maxKeys)
		}
		return &pipeline.StageError{Verdict: pipeline.VerdictReject, Status: http.StatusTooManyRequests, RetryAfter: wait,
			Msg: fmt.Sprintf("rate limited: %s (stage %s); retry after %s", why, r.name, wait.Round(time.Millisecond))}
	}
	return nil
}

// bucket returns key's bucket, or the overflow bucket (shared = true)
// when key has none and no kept bucket can be dropped without losing
// state.
func (r *RateLimit) bucket(key string, now time.Time) (b *rate.Limiter, shared bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if b, ok := r.buckets.Get(key); ok {
		return b, false
	}
	if r.buckets.Len() >= r.maxKeys {
		// Only the least recently used bucket, the one idle longest, is
		// looked at: O(1) per new key, and a bucket that still remembers
		// spent tokens is never dropped.
		_, oldest, _ := r.buckets.GetOldest()
		if oldest.TokensAt(now) < float64(r.burst) {
			return r.overflow, true
		}
		r.buckets.RemoveOldest()
	}
	b = rate.NewLimiter(r.limit, r.burst)
	r.buckets.Add(key, b)
	return b, false
}

var _ pipeline.Stage = (*RateLimit)(nil)
