package resilience_test

import (
	"strings"
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/pipeline/resilience"
)

// The defaults are the ones the README's sink table promises.
func TestDefaultsAreTheDocumentedOnes(t *testing.T) {
	c := resilience.Defaults()
	for _, tt := range []struct {
		name      string
		got, want any
	}{
		{"retry.max_attempts", c.Retry.MaxAttempts, 8},
		{"retry.initial_interval", c.Retry.InitialInterval, 200 * time.Millisecond},
		{"retry.max_interval", c.Retry.MaxInterval, 30 * time.Second},
		{"retry.max_elapsed", c.Retry.MaxElapsed, 15 * time.Minute},
		{"breaker.consecutive_failures", c.Breaker.ConsecutiveFailures, uint32(5)},
		{"breaker.failure_ratio", c.Breaker.FailureRatio, 0.0},
		{"breaker.min_requests", c.Breaker.MinRequests, uint32(10)},
		{"breaker.interval", c.Breaker.Interval, 60 * time.Second},
		{"breaker.open_timeout", c.Breaker.OpenTimeout, 30 * time.Second},
		{"breaker.sync_interval", c.Breaker.SyncInterval, time.Duration(0)},
	} {
		if tt.got != tt.want {
			t.Errorf("%s = %v (%T), want %v", tt.name, tt.got, tt.got, tt.want)
		}
	}
	if err := c.Validate(); err != nil {
		t.Errorf("the defaults do not validate: %v", err)
	}
}

// Each rule holds exactly at its bound: the bound itself is valid, one
// step past it is an error naming the field.
func TestValidateBounds(t *testing.T) {
	for _, tt := range []struct {
		name    string
		set     func(*resilience.Config)
		wantErr string // "" means valid
	}{
		{"per_second 0", func(c *resilience.Config) { c.RateLimit.PerSecond = 0 }, ""},
		{"per_second below 0", func(c *resilience.Config) { c.RateLimit.PerSecond = -0.5 }, "rate_limit.per_second"},
		{"burst 0", func(c *resilience.Config) { c.RateLimit.Burst = 0 }, ""},
		{"burst below 0", func(c *resilience.Config) { c.RateLimit.Burst = -1 }, "rate_limit.burst"},
		{"shared with per_second", func(c *resilience.Config) { c.RateLimit.PerSecond = 5; c.RateLimit.Shared = true }, ""},
		{"shared without per_second", func(c *resilience.Config) { c.RateLimit.PerSecond = 0; c.RateLimit.Shared = true }, "rate_limit.shared"},
		{"max_attempts 1", func(c *resilience.Config) { c.Retry.MaxAttempts = 1 }, ""},
		{"max_attempts 0", func(c *resilience.Config) { c.Retry.MaxAttempts = 0 }, "retry.max_attempts"},
		{"initial_interval 1ns", func(c *resilience.Config) { c.Retry.InitialInterval = 1; c.Retry.MaxInterval = 1 }, ""},
		{"initial_interval 0", func(c *resilience.Config) { c.Retry.InitialInterval = 0 }, "retry.initial_interval"},
		{"max_interval equal to initial", func(c *resilience.Config) { c.Retry.MaxInterval = c.Retry.InitialInterval }, ""},
		{"max_interval below initial", func(c *resilience.Config) { c.Retry.MaxInterval = c.Retry.InitialInterval - 1 }, "retry.max_interval"},
		{"max_elapsed 0 (no limit)", func(c *resilience.Config) { c.Retry.MaxElapsed = 0 }, ""},
		{"max_elapsed below 0", func(c *resilience.Config) { c.Retry.MaxElapsed = -1 }, "retry.max_elapsed"},
		{"failure_ratio 1", func(c *resilience.Config) { c.Breaker.FailureRatio = 1 }, ""},
		{"failure_ratio above 1", func(c *resilience.Config) { c.Breaker.FailureRatio = 1.01 }, "breaker.failure_ratio"},
		{"failure_ratio below 0", func(c *resilience.Config) { c.Breaker.FailureRatio = -0.01 }, "breaker.failure_ratio"},
		{"ratio alone opens the breaker", func(c *resilience.Config) { c.Breaker.ConsecutiveFailures = 0; c.Breaker.FailureRatio = 0.5 }, ""},
		{"nothing opens the breaker", func(c *resilience.Config) { c.Breaker.ConsecutiveFailures = 0; c.Breaker.FailureRatio = 0 }, "the breaker never opens"},
		{"interval 0", func(c *resilience.Config) { c.Breaker.Interval = 0 }, ""},
		{"interval below 0", func(c *resilience.Config) { c.Breaker.Interval = -1 }, "breaker.interval"},
		{"open_timeout 1ns", func(c *resilience.Config) { c.Breaker.OpenTimeout = 1 }, ""},
		{"open_timeout 0", func(c *resilience.Config) { c.Breaker.OpenTimeout = 0 }, "breaker.open_timeout"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := resilience.Defaults()
			tt.set(&c)
			err := c.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Validate = %v, want valid", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("Validate = %v, want an error naming %q", err, tt.wantErr)
			}
		})
	}
}
