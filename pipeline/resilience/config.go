// Package resilience wraps one sink's delivery attempts in a rate limit, a
// circuit breaker and retries with backoff. It is a delivery policy the
// core applies to every sink, so every vendor is treated the same way; it
// imports no sink. A shared breaker store (gobreaker.SharedDataStore) is
// injected by the caller: the Redis one lives with the Redis backend.
package resilience

import (
	"errors"
	"time"

	"github.com/labelpipe/labelpipe/pipeline/field"
)

// Config is a sink's resilience policy.
type Config struct {
	// RateLimit caps the attempts started per second.
	RateLimit RateLimit `yaml:"rate_limit"`
	// Retry decides how failed attempts are repeated.
	Retry Retry `yaml:"retry"`
	// Breaker decides when the vendor is considered down.
	Breaker Breaker `yaml:"breaker"`
}

// RateLimit is a token bucket.
type RateLimit struct {
	// PerSecond is the steady rate of attempts; 0 means unlimited (default).
	PerSecond float64 `yaml:"per_second"`
	// Burst is how many attempts may start at once; default 1 when
	// PerSecond is set.
	Burst int `yaml:"burst"`
	// Shared makes every replica draw from one bucket, kept in Redis, so
	// that N replicas together keep a vendor's limit rather than N times
	// it. Without a redis backend, or while Redis is down, each process
	// keeps its own bucket. Default false.
	Shared bool `yaml:"shared"`
}

// Retry is exponential backoff with full jitter.
type Retry struct {
	// MaxAttempts is the number of attempts before dead-lettering, ≥ 1;
	// default 8.
	MaxAttempts int `yaml:"max_attempts"`
	// InitialInterval is the backoff cap of the first retry; default 200ms.
	InitialInterval time.Duration `yaml:"initial_interval"`
	// MaxInterval caps one backoff (and an honoured Retry-After); default 30s.
	MaxInterval time.Duration `yaml:"max_interval"`
	// MaxElapsed gives up after this much time spent on one request,
	// excluding time waiting for an open breaker; 0 means no limit;
	// default 15m.
	MaxElapsed time.Duration `yaml:"max_elapsed"`
}

// Breaker configures the circuit breaker (gobreaker).
type Breaker struct {
	// ConsecutiveFailures opens the breaker after this many failures in a
	// row; default 5. 0 disables this trip rule.
	ConsecutiveFailures uint32 `yaml:"consecutive_failures"`
	// FailureRatio opens the breaker when this share of at least
	// MinRequests requests in one Interval failed; 0 disables (default).
	FailureRatio float64 `yaml:"failure_ratio"`
	// MinRequests is the sample size FailureRatio needs; default 10.
	MinRequests uint32 `yaml:"min_requests"`
	// Interval is the closed-state window after which counts reset;
	// default 60s.
	Interval time.Duration `yaml:"interval"`
	// OpenTimeout is how long the breaker stays open before a half-open
	// probe; default 30s.
	OpenTimeout time.Duration `yaml:"open_timeout"`
	// SyncInterval matters only when replicas share the breaker (Redis):
	// while the breaker is closed with no failure streak, a replica trusts
	// its copy of the shared state this long before reading it again, so
	// a trip elsewhere stops its attempts within SyncInterval. An open
	// breaker is honoured until its expiry without reading; failures,
	// streaks and probes always go to the store. 0 means the default:
	// 250ms, or open_timeout if that is shorter. At most open_timeout.
	SyncInterval time.Duration `yaml:"sync_interval"`
}

// defaultSyncInterval is breaker.sync_interval when it is not set.
const defaultSyncInterval = 250 * time.Millisecond

// syncInterval is SyncInterval with its default applied.
func (b Breaker) syncInterval() time.Duration {
	if b.SyncInterval > 0 {
		return b.SyncInterval
	}
	return min(defaultSyncInterval, b.OpenTimeout)
}

// Defaults returns the default policy.
func Defaults() Config {
	return Config{
		Retry:   Retry{MaxAttempts: 8, InitialInterval: 200 * time.Millisecond, MaxInterval: 30 * time.Second, MaxElapsed: 15 * time.Minute},
		Breaker: Breaker{ConsecutiveFailures: 5, MinRequests: 10, Interval: 60 * time.Second, OpenTimeout: 30 * time.Second},
	}
}

// Validate reports every invalid field.
func (c Config) Validate() error {
	var errs []error
	bad := func(path, format string, args ...any) {
		errs = append(errs, field.Errorf(path, format, args...))
	}
	if c.RateLimit.PerSecond < 0 {
		bad("rate_limit.per_second", "must be ≥ 0")
	}
	if c.RateLimit.Burst < 0 {
		bad("rate_limit.burst", "must be ≥ 0")
	}
	if c.RateLimit.Shared && c.RateLimit.PerSecond == 0 {
		bad("rate_limit.shared", "needs rate_limit.per_second")
	}
	if c.Retry.MaxAttempts < 1 {
		bad("retry.max_attempts", "must be ≥ 1")
	}
	if c.Retry.InitialInterval <= 0 {
		bad("retry.initial_interval", "must be > 0")
	}
	if c.Retry.MaxInterval < c.Retry.InitialInterval {
		bad("retry.max_interval", "must be ≥ retry.initial_interval")
	}
	if c.Retry.MaxElapsed < 0 {
		bad("retry.max_elapsed", "must be ≥ 0")
	}
	if c.Breaker.FailureRatio < 0 || c.Breaker.FailureRatio > 1 {
		bad("breaker.failure_ratio", "must be between 0 and 1")
	}
	if c.Breaker.ConsecutiveFailures == 0 && c.Breaker.FailureRatio == 0 {
		bad("breaker", "set consecutive_failures or failure_ratio, or the breaker never opens")
	}
	if c.Breaker.Interval < 0 {
		bad("breaker.interval", "must be ≥ 0")
	}
	if c.Breaker.OpenTimeout <= 0 {
		bad("breaker.open_timeout", "must be > 0")
	}
	// 0 is the default rather than an error: it follows a short
	// open_timeout, which a fixed 250ms default would exceed.
	if c.Breaker.SyncInterval < 0 {
		bad("breaker.sync_interval", "must be > 0 (or 0 for the default)")
	} else if c.Breaker.OpenTimeout > 0 && c.Breaker.SyncInterval > c.Breaker.OpenTimeout {
		bad("breaker.sync_interval", "must be ≤ breaker.open_timeout (%v)", c.Breaker.OpenTimeout)
	}
	return errors.Join(errs...)
}
