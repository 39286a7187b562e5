package resilience_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/sony/gobreaker/v2"

	"github.com/labelpipe/labelpipe/internal/redistest"
	"github.com/labelpipe/labelpipe/internal/testutil"
	redisb "github.com/labelpipe/labelpipe/pipeline/backend/redis"
	"github.com/labelpipe/labelpipe/pipeline/resilience"
)

// memStore is a gobreaker.SharedDataStore in memory, standing in for Redis;
// its Lock fails fast while the lock is held, like a SET NX lock.
type memStore struct {
	mu    sync.Mutex
	locks map[string]bool
	data  map[string][]byte
	down  atomic.Bool // every call fails, like a Redis outage
}

var errStoreDown = errors.New("store down")

func newMemStore() *memStore {
	return &memStore{locks: map[string]bool{}, data: map[string][]byte{}}
}

func (s *memStore) Lock(name string) error {
	if s.down.Load() {
		return errStoreDown
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.locks[name] {
		return errors.New("locked")
	}
	s.locks[name] = true
	return nil
}

func (s *memStore) Unlock(name string) error {
	if s.down.Load() {
		return errStoreDown
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.locks, name)
	return nil
}

func (s *memStore) GetData(name string) ([]byte, error) {
	if s.down.Load() {
		return nil, errStoreDown
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.data[name], nil
}

func (s *memStore) SetData(name string, data []byte) error {
	if s.down.Load() {
		return errStoreDown
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.data[name] = append([]byte(nil), data...)
	return nil
}

func (s *memStore) forget() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.data)
}

func sharedPair(t *testing.T, c resilience.Config) (a, b *resilience.Policy, store *memStore) {
	t.Helper()
	store = newMemStore()
	a = newPolicy(t, c, resilience.Options{Name: "labelbox", Store: store})
	b = newPolicy(t, c, resilience.Options{Name: "labelbox", Store: store})
	return a, b, store
}

func TestSharedBreakerAcrossReplicas(t *testing.T) {
	const open = 150 * time.Millisecond
	c := fastConfig()
	c.Retry.MaxAttempts = 1
	c.Breaker.ConsecutiveFailures = 2
	c.Breaker.OpenTimeout = open
	a, b, _ := sharedPair(t, c)

	fail := func(context.Context, resilience.Attempt) error { return errRetry }
	_, _ = a.Do(t.Context(), fail)
	if a.State() != gobreaker.StateClosed {
		t.Fatalf("open after one failure")
	}
	_, _ = b.Do(t.Context(), fail) // the second failure in a row, on the other replica
	opened := time.Now()
	if a.State() != gobreaker.StateOpen || b.State() != gobreaker.StateOpen {
		t.Fatalf("states a=%q b=%q, want both open", a.State(), b.State())
	}

	var probe resilience.Attempt
	var at time.Time
	if _, err := a.Do(t.Context(), func(_ context.Context, at0 resilience.Attempt) error {
		probe, at = at0, time.Now()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if at.Sub(opened) < open-5*time.Millisecond || probe.BreakerState != gobreaker.StateHalfOpen {
		t.Fatalf("attempt %v after opening in %q, want a half-open probe after %v", at.Sub(opened), probe.BreakerState, open)
	}
	if a.State() != gobreaker.StateClosed || b.State() != gobreaker.StateClosed {
		t.Fatalf("states a=%q b=%q after a good probe, want closed", a.State(), b.State())
	}
}

// TestSharedBreakerDoesNotSerialiseAttempts: the store's lock guards only
// the bookkeeping, never an attempt. On Redis a busy lock is polled, not
// refused at once as in memory, so both are run.
func TestSharedBreakerDoesNotSerialiseAttempts(t *testing.T) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			handle := be.start(t)
			ps, _ := replicas(t, fastConfig(), handle, resilience.Options{}, resilience.Options{})
			const n = 4
			var started sync.WaitGroup
			started.Add(n)
			all := make(chan struct{})
			go func() { started.Wait(); close(all) }()
			var wg sync.WaitGroup
			for i := range n {
				p := ps[i%len(ps)] // two callers on each replica
				wg.Go(func() {
					var once sync.Once // a retry must not count as another caller
					_, err := p.Do(t.Context(), func(ctx context.Context, _ resilience.Attempt) error {
						once.Do(started.Done)
						select { // every attempt is under way at once, or none finishes
						case <-all:
							return nil
						case <-time.After(3 * time.Second):
							// Not retried away: a later attempt would
							// find every caller started and succeed.
							t.Error("attempts were serialised: not every caller's attempt was under way at once")
							return errPerm
						}
					})
					if err != nil && !errors.Is(err, resilience.ErrPermanent) {
						t.Error(err)
					}
				})
			}
			wg.Wait()
		})
	}
}

func TestSharedBreakerSurvivesLostState(t *testing.T) {
	c := fastConfig()
	c.Retry.MaxAttempts = 1
	c.Breaker.ConsecutiveFailures = 2
	a, _, store := sharedPair(t, c)
	store.forget()
	if a.State() != gobreaker.StateClosed {
		t.Fatalf("State = %q after the store lost the state", a.State())
	}
	fail := func(context.Context, resilience.Attempt) error { return errRetry }
	_, _ = a.Do(t.Context(), fail)
	_, _ = a.Do(t.Context(), fail)
	if a.State() != gobreaker.StateOpen {
		t.Fatalf("State = %q, want the recreated breaker to open", a.State())
	}
}

// counted counts one replica's calls into a shared store.
type counted struct {
	gobreaker.SharedDataStore
	gets, sets, locks atomic.Int64
}

func (c *counted) Lock(name string) error { c.locks.Add(1); return c.SharedDataStore.Lock(name) }
func (c *counted) GetData(name string) ([]byte, error) {
	c.gets.Add(1)
	return c.SharedDataStore.GetData(name)
}
func (c *counted) SetData(name string, d []byte) error {
	c.sets.Add(1)
	return c.SharedDataStore.SetData(name, d)
}
func (c *counted) calls() int64 { return c.gets.Load() + c.sets.Load() + c.locks.Load() }
func (c *counted) reset()       { c.gets.Store(0); c.sets.Store(0); c.locks.Store(0) }

// backends give each replica its own handle on one store shared by the
// replicas of a test: in memory, and on a real redis-server through the
// store the daemon uses.
var backends = []struct {
	name  string
	start func(t *testing.T) func() gobreaker.SharedDataStore
}{
	{"memory", func(*testing.T) func() gobreaker.SharedDataStore {
		s := newMemStore()
		return func() gobreaker.SharedDataStore { return s }
	}},
	{"redis", func(t *testing.T) func() gobreaker.SharedDataStore {
		srv := redistest.Start(t)
		return func() gobreaker.SharedDataStore { return redisb.NewBreakerStore(srv.Client(t), "test:") }
	}},
}

// replicas builds n policies for one sink sharing a store, each counting
// its store calls.
func replicas(t *testing.T, c resilience.Config, handle func() gobreaker.SharedDataStore, opts ...resilience.Options) ([]*resilience.Policy, []*counted) {
	t.Helper()
	ps, cs := make([]*resilience.Policy, len(opts)), make([]*counted, len(opts))
	for i, o := range opts {
		cs[i] = &counted{SharedDataStore: handle()}
		o.Name, o.Store = "labelbox", cs[i]
		ps[i] = newPolicy(t, c, o)
	}
	return ps, cs
}

func sharedState(t *testing.T, s gobreaker.SharedDataStore) gobreaker.SharedState {
	t.Helper()
	data, err := s.GetData("gobreaker:state:labelbox")
	if err != nil {
		t.Fatal(err)
	}
	var st gobreaker.SharedState
	if err := json.Unmarshal(data, &st); err != nil {
		t.Fatalf("shared state %q: %v", data, err)
	}
	return st
}

func TestSharedBreakerQuietOutcomesWriteNothing(t *testing.T) {
	cancelled := errors.New("cancelled")
	tests := []struct {
		name    string
		ratio   float64
		outcome error // cancelled: the caller cancels during the attempt
		writes  bool  // every attempt is written
	}{
		{"successes", 0, nil, false},
		{"permanent errors", 0, errPerm, false},
		{"cancelled attempts", 0, cancelled, false},
		{"successes with failure_ratio", 0.5, nil, true},
		{"cancelled attempts with failure_ratio", 0.5, cancelled, false},
	}
	for _, be := range backends {
		for _, tt := range tests {
			t.Run(be.name+"/"+tt.name, func(t *testing.T) {
				c := fastConfig()
				c.Retry.MaxAttempts = 1
				c.Breaker = resilience.Breaker{ConsecutiveFailures: 5, FailureRatio: tt.ratio, MinRequests: 10,
					Interval: time.Minute, OpenTimeout: time.Minute, SyncInterval: time.Minute}
				ps, cs := replicas(t, c, be.start(t), resilience.Options{}, resilience.Options{})
				// Each replica reads (the first creates) the shared state on
				// first use; what is counted is the steady state after it.
				for _, p := range ps {
					if st := p.State(); st != gobreaker.StateClosed {
						t.Fatalf("State = %q on a new breaker", st)
					}
				}
				for _, cn := range cs {
					cn.reset()
				}
				const perReplica, workers = 20, 4
				var attempts atomic.Int64
				var wg sync.WaitGroup
				for _, p := range ps {
					for range workers {
						wg.Go(func() {
							for range perReplica / workers {
								ctx, cancel := context.WithCancel(t.Context())
								_, err := p.Do(ctx, func(ctx context.Context, _ resilience.Attempt) error {
									attempts.Add(1)
									if tt.outcome == cancelled {
										cancel()
										return ctx.Err()
									}
									return tt.outcome
								})
								cancel()
								if (err == nil) != (tt.outcome == nil) {
									t.Errorf("Do = %v with attempts answering %v", err, tt.outcome)
								}
							}
						})
					}
				}
				wg.Wait()
				n := int64(len(ps) * perReplica)
				if attempts.Load() != n {
					t.Fatalf("%d attempts, want %d", attempts.Load(), n)
				}
				var sets, calls int64
				for _, cn := range cs {
					sets += cn.sets.Load()
					calls += cn.calls()
				}
				if tt.writes {
					if sets != n {
						t.Fatalf("%d attempts wrote the shared state %d times, want every outcome written", n, sets)
					}
					if st := sharedState(t, cs[0]); st.Counts.Requests != uint32(n) {
						t.Fatalf("shared counts %+v, want %d requests", st.Counts, n)
					}
					return
				}
				if calls != 0 {
					t.Fatalf("%d attempts on a closed breaker made %d store calls (%d writes), want none", n, calls, sets)
				}
				if ps[0].State() != gobreaker.StateClosed || ps[1].State() != gobreaker.StateClosed {
					t.Fatalf("states %q %q, want closed", ps[0].State(), ps[1].State())
				}
			})
		}
	}
}

func TestSharedBreakerStreakSeenAndReset(t *testing.T) {
	const syncEvery = 80 * time.Millisecond
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			c := fastConfig()
			c.Retry.MaxAttempts = 1
			c.Breaker = resilience.Breaker{ConsecutiveFailures: 3, OpenTimeout: time.Minute, SyncInterval: syncEvery}
			ps, cs := replicas(t, c, be.start(t), resilience.Options{}, resilience.Options{})
			a, b := ps[0], ps[1]
			if _, err := a.Do(t.Context(), func(context.Context, resilience.Attempt) error { return errRetry }); !errors.Is(err, resilience.ErrExhausted) {
				t.Fatalf("Do = %v, want the failure", err)
			}
			failed := time.Now()
			if st := sharedState(t, cs[0]); st.Counts.ConsecutiveFailures != 1 {
				t.Fatalf("shared counts %+v after one failure on A", st.Counts)
			}
			// B's successes write nothing until B reads the streak, which
			// it must within sync_interval; then its success ends it.
			cs[1].reset()
			tick := time.NewTicker(time.Millisecond)
			defer tick.Stop()
			for cs[1].sets.Load() == 0 {
				if time.Since(failed) > syncEvery+2*time.Second {
					t.Fatalf("B never saw A's failure streak (%d store reads)", cs[1].gets.Load())
				}
				if _, err := b.Do(t.Context(), func(context.Context, resilience.Attempt) error { return nil }); err != nil {
					t.Fatal(err)
				}
				<-tick.C
			}
			if seen := time.Since(failed); seen > syncEvery+500*time.Millisecond {
				t.Errorf("B recorded a reset %v after A's failure, want within sync_interval %v", seen, syncEvery)
			}
			if st := sharedState(t, cs[0]); st.Counts.ConsecutiveFailures != 0 || st.State != gobreaker.StateClosed {
				t.Fatalf("shared state %v %+v after B's success, want the streak reset", st.State, st.Counts)
			}
			// Two more failures on A: three in all, but not in a row.
			for range 2 {
				_, _ = a.Do(t.Context(), func(context.Context, resilience.Attempt) error { return errRetry })
			}
			if st := sharedState(t, cs[0]); st.State != gobreaker.StateClosed || st.Counts.ConsecutiveFailures != 2 {
				t.Fatalf("shared state %v %+v, want closed with a streak of 2", st.State, st.Counts)
			}
		})
	}
}

func TestSharedBreakerOpenElsewhereStopsAttempts(t *testing.T) {
	const (
		open      = 500 * time.Millisecond
		syncEvery = 40 * time.Millisecond
	)
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			c := fastConfig()
			c.Retry.MaxAttempts = 1
			c.Breaker = resilience.Breaker{ConsecutiveFailures: 2, OpenTimeout: open, SyncInterval: syncEvery}
			ch, onChange := transitions()
			ps, cs := replicas(t, c, be.start(t), resilience.Options{OnStateChange: onChange}, resilience.Options{})
			a, b := ps[0], ps[1]
			for range 2 {
				_, _ = a.Do(t.Context(), func(context.Context, resilience.Attempt) error { return errRetry })
			}
			expectTransitions(t, ch, "closed->open")
			tripped := time.Now()
			st := sharedState(t, cs[0])
			if st.State != gobreaker.StateOpen {
				t.Fatalf("shared state %v after A tripped", st.State)
			}
			expiry := st.Expiry

			// B sees it open by itself within sync_interval.
			tick := time.NewTicker(time.Millisecond)
			defer tick.Stop()
			for b.State() != gobreaker.StateOpen {
				if time.Since(tripped) > syncEvery+2*time.Second {
					t.Fatalf("B still sees %q", b.State())
				}
				<-tick.C
			}
			if seen := time.Since(tripped); seen > syncEvery+500*time.Millisecond {
				t.Errorf("B saw the trip after %v, want within sync_interval %v", seen, syncEvery)
			}

			// While open, B waits: no attempt, and no store call either.
			cs[1].reset()
			ctx, cancel := context.WithDeadline(t.Context(), expiry.Add(-open/3))
			var bAttempts atomic.Int64
			n, err := b.Do(ctx, func(context.Context, resilience.Attempt) error { bAttempts.Add(1); return nil })
			cancel()
			if n != 0 || bAttempts.Load() != 0 || !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("B.Do while open = %d attempts (%d seen), %v; want none and the deadline", n, bAttempts.Load(), err)
			}
			if calls := cs[1].calls(); calls != 0 {
				t.Fatalf("B made %d store calls while the breaker was open", calls)
			}

			// After open_timeout a probe recovers both replicas.
			type attempt struct {
				at    time.Time
				state gobreaker.State
			}
			var (
				mu   sync.Mutex
				seen []attempt
				wg   sync.WaitGroup
			)
			for _, p := range ps {
				wg.Go(func() {
					_, err := p.Do(t.Context(), func(_ context.Context, at resilience.Attempt) error {
						mu.Lock()
						seen = append(seen, attempt{time.Now(), at.BreakerState})
						mu.Unlock()
						return nil
					})
					if err != nil {
						t.Errorf("Do after the open period: %v", err)
					}
				})
			}
			wg.Wait()
			probes := 0
			for _, s := range seen {
				if s.at.Before(expiry) {
					t.Errorf("attempt at %v, before the open period ended (%v)", s.at.Format(time.StampMicro), expiry.Format(time.StampMicro))
				}
				if s.state == gobreaker.StateHalfOpen {
					probes++
				}
			}
			if len(seen) != 2 || probes == 0 {
				t.Errorf("attempts %+v, want two, at least one a half-open probe", seen)
			}
			if a.State() != gobreaker.StateClosed || b.State() != gobreaker.StateClosed || sharedState(t, cs[0]).State != gobreaker.StateClosed {
				t.Fatalf("states a=%q b=%q after the probe, want closed", a.State(), b.State())
			}
		})
	}
}

// downStores are shared stores a test can take down and bring back: in
// memory, whose calls fail at once, and a real redis-server, whose client
// has to notice the server is gone and whose Lock polls a busy lock.
//
// retries counts how often one Lock repeated its SET NX: a Lock that gives
// up at once when the store does not answer never does. (The memory
// store's Lock cannot poll.)
var downStores = []struct {
	name  string
	start func(t *testing.T) (store gobreaker.SharedDataStore, down, up func(), retries func() int)
}{
	{"memory", func(*testing.T) (gobreaker.SharedDataStore, func(), func(), func() int) {
		s := newMemStore()
		return s, func() { s.down.Store(true) }, func() { s.down.Store(false) }, func() int { return 0 }
	}},
	{"redis", func(t *testing.T) (gobreaker.SharedDataStore, func(), func(), func() int) {
		srv := redistest.Start(t)
		c := srv.Client(t)
		tries := &lockTokens{seen: map[string]int{}}
		c.AddHook(tries)
		return redisb.NewBreakerStore(c, "test:"), srv.Stop, srv.Restart, tries.repeats
	}},
}

// lockTokens counts the SET NX commands per value: each Lock sends a
// fresh random token, so a token seen twice is a Lock that tried again.
type lockTokens struct {
	mu   sync.Mutex
	seen map[string]int
}

func (h *lockTokens) DialHook(next goredis.DialHook) goredis.DialHook { return next }
func (h *lockTokens) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return next
}
func (h *lockTokens) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		if args := cmd.Args(); len(args) >= 3 && strings.EqualFold(cmd.Name(), "set") && slices.ContainsFunc(args, func(a any) bool {
			s, ok := a.(string)
			return ok && strings.EqualFold(s, "nx")
		}) {
			h.mu.Lock()
			h.seen[fmt.Sprint(args[2])]++
			h.mu.Unlock()
		}
		return next(ctx, cmd)
	}
}

func (h *lockTokens) repeats() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, c := range h.seen {
		n += c - 1
	}
	return n
}

func TestSharedBreakerStoreDownDoesNotStopDeliveries(t *testing.T) {
	tests := []struct {
		name      string
		syncEvery time.Duration
	}{
		{"admissions read the store", time.Millisecond},
		{"admissions trust their view", time.Minute},
	}
	for _, st := range downStores {
		for _, tt := range tests {
			t.Run(st.name+"/"+tt.name, func(t *testing.T) {
				c := fastConfig()
				c.Retry.MaxAttempts = 3
				c.Breaker = resilience.Breaker{ConsecutiveFailures: 2, OpenTimeout: time.Minute, SyncInterval: tt.syncEvery}
				store, down, up, retries := st.start(t)
				var logs testutil.LockedBuffer
				p := newPolicy(t, c, resilience.Options{Name: "labelbox", Store: store, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
				// A first delivery while the store answers gives the replica
				// a view to trust. (A replica that never saw the store is
				// TestSharedBreakerStoreDownAtNew's.)
				if _, err := p.Do(t.Context(), (&script{}).attempt); err != nil {
					t.Fatal(err)
				}
				down()
				before := retries()
				for range 3 {
					s := &script{errs: []error{errRetry}}
					if n, err := p.Do(t.Context(), s.attempt); n != 2 || err != nil {
						t.Fatalf("Do = %d, %v; want a retry then success despite the store", n, err)
					}
				}
				// Recording gives up at once when the store does not answer,
				// rather than waiting for a lock it cannot get.
				if n := retries() - before; n != 0 {
					t.Fatalf("with the store down, Lock tried its SET NX again %d times; want it to give up at once", n)
				}
				if got := strings.Count(logs.String(), "shared breaker state"); got != 1 {
					t.Fatalf("store outage logged %d times, want once:\n%s", got, logs.String())
				}
				up()
				if _, err := p.Do(t.Context(), (&script{errs: []error{errRetry}}).attempt); err != nil {
					t.Fatal(err)
				}
				if !strings.Contains(logs.String(), "shared breaker state available again") {
					t.Fatalf("store recovery not logged:\n%s", logs.String())
				}
			})
		}
	}
}

func TestSharedBreakerRecreatesLostStateOnRead(t *testing.T) {
	c := fastConfig()
	c.Retry.MaxAttempts = 1
	c.Breaker.ConsecutiveFailures = 2
	c.Breaker.SyncInterval = time.Millisecond
	a, _, store := sharedPair(t, c)
	store.forget()
	// The next read of the shared state (here by State) finds it gone and
	// writes a fresh closed one.
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	deadline := time.Now().Add(2 * time.Second)
	for {
		if st := a.State(); st != gobreaker.StateClosed {
			t.Fatalf("State = %q after the store lost the state", st)
		}
		if data, _ := store.GetData("gobreaker:state:labelbox"); len(data) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the lost state was never written again")
		}
		<-tick.C
	}
	if st := sharedState(t, store); st.State != gobreaker.StateClosed {
		t.Fatalf("recreated state %v, want closed", st.State)
	}
}

func TestSharedBreakerCountsConcurrentFailures(t *testing.T) {
	const perReplica = 10
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			c := fastConfig()
			c.Retry.MaxAttempts = 1
			// Trips only if no failure of either replica is lost.
			c.Breaker = resilience.Breaker{ConsecutiveFailures: 2 * perReplica, OpenTimeout: time.Minute}
			ps, cs := replicas(t, c, be.start(t), resilience.Options{}, resilience.Options{})
			var started sync.WaitGroup
			started.Add(2 * perReplica)
			all := make(chan struct{})
			go func() { started.Wait(); close(all) }()
			var wg sync.WaitGroup
			for _, p := range ps {
				for range perReplica {
					wg.Go(func() {
						_, err := p.Do(t.Context(), func(context.Context, resilience.Attempt) error {
							started.Done()
							<-all // every attempt admitted before any is recorded
							return errRetry
						})
						if !errors.Is(err, resilience.ErrExhausted) {
							t.Errorf("Do = %v, want the failure", err)
						}
					})
				}
			}
			wg.Wait()
			if st := sharedState(t, cs[0]); st.State != gobreaker.StateOpen {
				t.Fatalf("shared state %v %+v after %d concurrent failures, want open", st.State, st.Counts, 2*perReplica)
			}
		})
	}
}

// outages give a store that a test can take down and bring back: in
// memory, and a real redis-server stopped and started again on its socket.
var outages = []struct {
	name  string
	start func(t *testing.T) (handle func() gobreaker.SharedDataStore, down, up func())
}{
	{"memory", func(*testing.T) (func() gobreaker.SharedDataStore, func(), func()) {
		s := newMemStore()
		return func() gobreaker.SharedDataStore { return s }, func() { s.down.Store(true) }, func() { s.down.Store(false) }
	}},
	{"redis", func(t *testing.T) (func() gobreaker.SharedDataStore, func(), func()) {
		srv := redistest.Start(t)
		return func() gobreaker.SharedDataStore { return redisb.NewBreakerStore(srv.Client(t), "test:") }, srv.Stop, srv.Restart
	}},
}

// TestSharedBreakerStoreDownAtNew: a replica built while the store is down
// starts at once without touching it, delivers on its own view meanwhile,
// and joins the shared state when the store answers: its failures count
// towards the shared streak, and a trip elsewhere stops its attempts.
func TestSharedBreakerStoreDownAtNew(t *testing.T) {
	const syncEvery = 20 * time.Millisecond
	for _, be := range outages {
		t.Run(be.name, func(t *testing.T) {
			c := fastConfig()
			c.Retry.MaxAttempts = 2
			c.Breaker = resilience.Breaker{ConsecutiveFailures: 3, OpenTimeout: time.Minute, SyncInterval: syncEvery}
			handle, down, up := be.start(t)
			down()

			store := &counted{SharedDataStore: handle()}
			began := time.Now()
			b, err := resilience.New(c, resilience.Options{Name: "labelbox", Store: store})
			if err != nil {
				t.Fatalf("New with the store down: %v", err)
			}
			if el, calls := time.Since(began), store.calls(); calls != 0 || el > time.Second {
				t.Fatalf("New made %d store calls and took %v, want none and at once", calls, el)
			}

			// Deliveries go ahead while the store is down.
			if n, err := b.Do(t.Context(), (&script{errs: []error{errRetry}}).attempt); n != 2 || err != nil {
				t.Fatalf("Do with the store down = %d, %v; want a retry then success", n, err)
			}
			if st := b.State(); st != gobreaker.StateClosed {
				t.Fatalf("State with the store down = %q", st)
			}

			// The store is back: b's next use creates the shared state.
			up()
			check := handle()
			tick := time.NewTicker(time.Millisecond)
			defer tick.Stop()
			deadline := time.Now().Add(5 * time.Second)
			for {
				if _, err := b.Do(t.Context(), (&script{}).attempt); err != nil {
					t.Fatal(err)
				}
				if data, err := check.GetData("gobreaker:state:labelbox"); err == nil && len(data) > 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the shared state was never created after the store came back")
				}
				<-tick.C
			}
			// b's failures now count in the shared state...
			fail := func(context.Context, resilience.Attempt) error { return errRetry }
			if _, err := b.Do(t.Context(), fail); !errors.Is(err, resilience.ErrExhausted) {
				t.Fatalf("Do = %v, want exhausted", err)
			}
			if st := sharedState(t, check); st.State != gobreaker.StateClosed || st.Counts.ConsecutiveFailures != 2 {
				t.Fatalf("shared state %v %+v, want b's two failures counted", st.State, st.Counts)
			}
			// ...so one more on another replica trips it, for b too.
			once := c
			once.Retry.MaxAttempts = 1
			a := newPolicy(t, once, resilience.Options{Name: "labelbox", Store: handle()})
			if _, err := a.Do(t.Context(), fail); !errors.Is(err, resilience.ErrExhausted) {
				t.Fatalf("a.Do = %v, want the failure", err)
			}
			if st := sharedState(t, check); st.State != gobreaker.StateOpen {
				t.Fatalf("shared state %v %+v after the third failure in a row, want open", st.State, st.Counts)
			}
			tripped := time.Now()
			for b.State() != gobreaker.StateOpen {
				if time.Since(tripped) > syncEvery+2*time.Second {
					t.Fatalf("b still sees %q", b.State())
				}
				<-tick.C
			}
			ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
			defer cancel()
			if n, err := b.Do(ctx, (&script{}).attempt); n != 0 || !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("b.Do while the shared breaker is open = %d, %v; want no attempt", n, err)
			}
		})
	}
}
