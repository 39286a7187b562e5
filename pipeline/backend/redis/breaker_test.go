package redis_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"

	"github.com/labelpipe/labelpipe/internal/redistest"
	redisb "github.com/labelpipe/labelpipe/pipeline/backend/redis"
)

func TestRedisBreakerStoreSharesState(t *testing.T) {
	srv := redistest.Start(t)
	settings := func(timeout time.Duration) gobreaker.Settings {
		return gobreaker.Settings{
			Name:        "scale",
			Timeout:     timeout,
			ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= 3 },
		}
	}
	// Two replicas: separate clients, separate stores, one Redis.
	newCB := func(timeout time.Duration) *gobreaker.DistributedCircuitBreaker[int] {
		cb, err := gobreaker.NewDistributedCircuitBreaker[int](redisb.NewBreakerStore(srv.Client(t), testPrefix), settings(timeout))
		if err != nil {
			t.Fatal(err)
		}
		return cb
	}
	const open = 400 * time.Millisecond
	a, b := newCB(open), newCB(open)

	down := errors.New("vendor down")
	for range 3 {
		if _, err := a.Execute(func() (int, error) { return 0, down }); !errors.Is(err, down) {
			t.Fatalf("execute: %v", err)
		}
	}
	if st, err := a.State(); err != nil || st != gobreaker.StateOpen {
		t.Fatalf("a: %v %v", st, err)
	}
	// b never saw a failure, yet it is open and spends no attempt.
	var called atomic.Int32
	_, err := b.Execute(func() (int, error) { called.Add(1); return 1, nil })
	if !errors.Is(err, gobreaker.ErrOpenState) {
		t.Fatalf("b: %v, want open", err)
	}
	if called.Load() != 0 {
		t.Fatal("b called the vendor while open")
	}

	// After the open period one half-open probe decides, for both.
	deadline := time.After(5 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		st, err := b.State()
		if err != nil {
			t.Fatal(err)
		}
		if st == gobreaker.StateHalfOpen {
			break
		}
		select {
		case <-deadline:
			t.Fatalf("still %v after the open period", st)
		case <-tick.C:
		}
	}
	if v, err := b.Execute(func() (int, error) { return 7, nil }); err != nil || v != 7 {
		t.Fatalf("probe: %v %v", v, err)
	}
	if st, err := a.State(); err != nil || st != gobreaker.StateClosed {
		t.Fatalf("a after b's probe: %v %v", st, err)
	}
}

func TestRedisBreakerStoreLock(t *testing.T) {
	srv := redistest.Start(t)
	s1 := redisb.NewBreakerStore(srv.Client(t), testPrefix)
	s2 := redisb.NewBreakerStore(srv.Client(t), testPrefix)
	if err := s1.Lock("m"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := s2.Lock("m"); !errors.Is(err, redisb.ErrBreakerLocked) {
		t.Fatalf("second lock: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("lock wait was not bounded: %s", d)
	}

	// s3 waits while s1 holds the lock and gets it once s1 lets go: s1
	// lets go only after s3 was refused, so s3 provably tried during the
	// hold and waited instead of giving up.
	tries := make(chan bool, 128)
	c3 := srv.Client(t)
	c3.AddHook(lockTries(tries))
	s3 := redisb.NewBreakerStore(c3, testPrefix)
	got := make(chan error, 1)
	go func() { got <- s3.Lock("m") }()
	select {
	case ok := <-tries:
		if ok {
			t.Fatal("s3 took the lock while s1 held it")
		}
	case err := <-got:
		t.Fatalf("s3's Lock returned %v before trying the held lock", err)
	case <-time.After(5 * time.Second):
		t.Fatal("s3 never tried the lock")
	}
	if err := s1.Unlock("m"); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatalf("s3 did not wait for the lock s1 released: %v", err)
	}
	if n := drainTrue(tries); n != 1 {
		t.Fatalf("s3 took the lock %d times, want once after s1 let go", n)
	}

	// An unlock by someone who lost the lock does not release the holder's.
	rdb := srv.Client(t)
	if err := s1.Lock("n"); err != nil {
		t.Fatal(err)
	}
	rdb.Set(t.Context(), testPrefix+"n", "someone else", time.Minute) // s1's lock expired and was retaken
	if err := s1.Unlock("n"); err != nil {
		t.Fatal(err)
	}
	if v := rdb.Get(t.Context(), testPrefix+"n").Val(); v != "someone else" {
		t.Fatalf("foreign lock released: %q", v)
	}
	if ttl := rdb.PTTL(t.Context(), testPrefix+"m").Val(); ttl <= 0 {
		t.Fatalf("lock without expiry: %s", ttl)
	}
}

func TestRedisBreakerStoreData(t *testing.T) {
	srv := redistest.Start(t)
	s := redisb.NewBreakerStore(srv.Client(t), testPrefix)
	if d, err := s.GetData("state"); err != nil || d != nil {
		t.Fatalf("missing state: %q %v", d, err)
	}
	if err := s.SetData("state", []byte(`{"state":2}`)); err != nil {
		t.Fatal(err)
	}
	if d, err := s.GetData("state"); err != nil || string(d) != `{"state":2}` {
		t.Fatalf("state: %q %v", d, err)
	}
	srv.Stop()
	if _, err := s.GetData("state"); err == nil {
		t.Fatal("no error without redis")
	}
	if err := s.Lock("m"); err == nil || errors.Is(err, redisb.ErrBreakerLocked) {
		t.Fatalf("lock without redis: %v", err)
	}
}

func TestRedisBreakerStoreMutualExclusion(t *testing.T) {
	srv := redistest.Start(t)
	tries := make(chan bool, 1024)
	stores := make([]gobreaker.SharedDataStore, 2)
	for i := range stores {
		c := srv.Client(t)
		c.AddHook(lockTries(tries))
		stores[i] = redisb.NewBreakerStore(c, testPrefix)
	}
	var (
		inside, most atomic.Int32
		refused      atomic.Int32
		wg           sync.WaitGroup
	)
	// Count refusals as they happen, so that the buffer never fills.
	counted := make(chan struct{})
	go func() {
		defer close(counted)
		for ok := range tries {
			if !ok {
				refused.Add(1)
			}
		}
	}()
	ping := srv.Client(t)
	for i := range 6 {
		s := stores[i%2]
		wg.Go(func() {
			for range 15 {
				if err := s.Lock("x"); err != nil {
					t.Error(err)
					return
				}
				n := inside.Add(1)
				for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
				}
				// Hold the lock across a Redis round trip, long enough
				// for the others' attempts to land inside the hold.
				if err := ping.Ping(t.Context()).Err(); err != nil {
					t.Error(err)
				}
				inside.Add(-1)
				if err := s.Unlock("x"); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(tries)
	<-counted
	if m := most.Load(); m != 1 {
		t.Errorf("%d holders at once, want 1", m)
	}
	// Without contention the check above could not fail.
	if refused.Load() == 0 {
		t.Error("no Lock was ever refused: the holders never overlapped in time")
	}
}

// lockTries reports the answer to every SET NX (Lock's attempt) a client
// makes: true when it took the lock.
type lockTries chan bool

func (h lockTries) DialHook(next goredis.DialHook) goredis.DialHook { return next }
func (h lockTries) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return next
}
func (h lockTries) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		err := next(ctx, cmd)
		if bc, ok := cmd.(*goredis.BoolCmd); ok && err == nil && strings.EqualFold(cmd.Name(), "set") {
			h <- bc.Val()
		}
		return err
	}
}

// drainTrue counts the successful tries left in ch.
func drainTrue(ch chan bool) int {
	n := 0
	for {
		select {
		case ok := <-ch:
			if ok {
				n++
			}
		default:
			return n
		}
	}
}
