package stages

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/labelpipe/labelpipe/pipeline"
)

// The rate_limit stage caps how many webhooks are accepted per second,
// with a token bucket (golang.org/x/time/rate) in this process. Past the
// limit it answers 429 with Retry-After, so a runaway caller is told to
// slow down instead of filling the queues. With a jq key, each distinct
// value (a project, say) gets its own bucket.
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
	// MaxKeys bounds how many buckets are kept; when full, the buckets
	// start over. Default 10000.
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
	r := &RateLimit{name: env.Name, limit: rate.Limit(c.PerSecond), burst: burst, maxKeys: c.MaxKeys,
		buckets: map[string]*rate.Limiter{}}
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

	mu      sync.Mutex
	buckets map[string]*rate.Limiter
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
	res := r.bucket(key).Reserve()
	if wait := res.Delay(); wait > 0 {
		// Not taken: the token stays for the caller that waits its turn.
		res.Cancel()
		return &pipeline.StageError{Verdict: pipeline.VerdictReject, Status: http.StatusTooManyRequests, RetryAfter: wait,
			Msg: fmt.Sprintf("rate limited: more than %g webhooks a second (stage %s); retry after %s", float64(r.limit), r.name, wait.Round(time.Millisecond))}
	}
	return nil
}

func (r *RateLimit) bucket(key string) *rate.Limiter {
	r.mu.Lock()
	defer r.mu.Unlock()
	b, ok := r.buckets[key]
	if !ok {
		if len(r.buckets) >= r.maxKeys {
			// Bounded memory for callers that vary the key; a fresh
			// bucket is full, so this only ever lets more through.
			r.buckets = map[string]*rate.Limiter{}
		}
		b = rate.NewLimiter(r.limit, r.burst)
		r.buckets[key] = b
	}
	return b
}

var _ pipeline.Stage = (*RateLimit)(nil)
