package redis

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/go-redis/redis_rate/v10"
	goredis "github.com/redis/go-redis/v9"
)

// RateLimiter shares a sink's rate_limit between replicas: one GCRA
// bucket per sink in Redis (go-redis's redis_rate), at
// <prefix>ratelimit:{sink.<name>}, so that N replicas together keep the
// vendor's limit instead of N times it.
type RateLimiter struct {
	limiter *redis_rate.Limiter
	prefix  string
}

// NewRateLimiter returns the shared rate limiter over client; keys start
// with prefix.
func NewRateLimiter(client goredis.UniversalClient, prefix string) *RateLimiter {
	return &RateLimiter{limiter: redis_rate.NewLimiter(client), prefix: prefix}
}

// Reserve takes a token from sink's bucket of perSecond with burst, or
// says how long to wait before asking again (0: go now).
func (l *RateLimiter) Reserve(ctx context.Context, sink string, perSecond float64, burst int) (time.Duration, error) {
	res, err := l.limiter.Allow(ctx, l.prefix+"ratelimit:{sink."+sink+"}", limit(perSecond, burst))
	if err != nil {
		return 0, fmt.Errorf("shared rate limit: %w", err)
	}
	if res.Allowed > 0 {
		return 0, nil
	}
	return max(res.RetryAfter, time.Millisecond), nil
}

// limit expresses perSecond as redis_rate's whole number of requests per
// period: 25/s is 25 a second, 0.5/s is 1 every 2s.
func limit(perSecond float64, burst int) redis_rate.Limit {
	rate := max(1, int(math.Round(perSecond)))
	return redis_rate.Limit{Rate: rate, Burst: max(1, burst), Period: time.Duration(float64(rate) / perSecond * float64(time.Second))}
}
