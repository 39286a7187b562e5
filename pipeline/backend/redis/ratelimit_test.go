package redis_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/labelpipe/labelpipe/internal/redistest"
	redisb "github.com/labelpipe/labelpipe/pipeline/backend/redis"
	"github.com/labelpipe/labelpipe/pipeline/resilience"
)

func sharedPolicy(t *testing.T, limiter resilience.SharedLimiter, perSecond float64) *resilience.Policy {
	t.Helper()
	c := resilience.Defaults()
	c.RateLimit = resilience.RateLimit{PerSecond: perSecond, Burst: 1, Shared: true}
	p, err := resilience.New(c, resilience.Options{Name: "scale", Limiter: limiter})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// Two replicas (own clients, own policies) with a shared rate_limit of
// 20/s together start attempts no faster than 20/s; each alone would
// allow 20/s, twice that together.
func TestSharedRateLimitHoldsAcrossReplicas(t *testing.T) {
	srv := redistest.Start(t)
	const perSecond, each = 20, 11
	var (
		mu  sync.Mutex
		at  []time.Time
		wg  sync.WaitGroup
		ctx = t.Context()
	)
	for range 2 {
		p := sharedPolicy(t, redisb.NewRateLimiter(srv.Client(t), testPrefix), perSecond)
		wg.Go(func() {
			for range each {
				if _, err := p.Do(ctx, func(context.Context, resilience.Attempt) error {
					mu.Lock()
					at = append(at, time.Now())
					mu.Unlock()
					return nil
				}); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	slices.SortFunc(at, func(a, b time.Time) int { return a.Compare(b) })
	// 22 attempts at 20/s with a burst of 1: 21 intervals of 50ms.
	if span, want := at[len(at)-1].Sub(at[0]), time.Duration(len(at)-1)*time.Second/perSecond; span < want-50*time.Millisecond {
		t.Errorf("%d attempts of two replicas took %v, want ≥ %v at a shared %d/s", len(at), span, want, perSecond)
	}
	// Every 500ms window holds at most 10 + the burst.
	for i := range at {
		n := 0
		for _, b := range at[i:] {
			if b.Sub(at[i]) < 500*time.Millisecond {
				n++
			}
		}
		if n > perSecond/2+1 {
			t.Fatalf("%d attempts started within 500ms of %v, want ≤ %d", n, at[i], perSecond/2+1)
		}
	}
}

// With Redis out of reach each replica keeps its own bucket: attempts go
// on at the local rate instead of stopping.
func TestSharedRateLimitFallsBackWhenRedisIsDown(t *testing.T) {
	client := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 100 * time.Millisecond})
	t.Cleanup(func() { _ = client.Close() })
	p := sharedPolicy(t, redisb.NewRateLimiter(client, testPrefix), 100)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	calls := 0
	for range 3 {
		if _, err := p.Do(ctx, func(context.Context, resilience.Attempt) error { calls++; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	if calls != 3 {
		t.Fatalf("%d attempts, want 3", calls)
	}
}
