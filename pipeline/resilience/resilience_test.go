package resilience_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/labelpipe/labelpipe/pipeline/field"
	"github.com/labelpipe/labelpipe/pipeline/resilience"
)

// vendorErr is an attempt error that classifies itself like a
// pipeline.DeliveryError does.
type vendorErr struct {
	retry bool
	after time.Duration
}

func (e *vendorErr) Error() string             { return "vendor said no" }
func (e *vendorErr) Retryable() bool           { return e.retry }
func (e *vendorErr) RetryAfter() time.Duration { return e.after }

var (
	errRetry = &vendorErr{retry: true}
	errPerm  = &vendorErr{retry: false}
)

// fastConfig retries quickly and keeps the breaker out of the way.
func fastConfig() resilience.Config {
	c := resilience.Defaults()
	c.Retry = resilience.Retry{MaxAttempts: 5, InitialInterval: time.Millisecond, MaxInterval: 4 * time.Millisecond}
	c.Breaker = resilience.Breaker{ConsecutiveFailures: 1000, MinRequests: 10, OpenTimeout: time.Second}
	return c
}

func newPolicy(t *testing.T, c resilience.Config, opts resilience.Options) *resilience.Policy {
	t.Helper()
	p, err := resilience.New(c, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return p
}

// script returns an attempt func that answers with errs in order, then nil,
// recording every Attempt it sees.
type script struct {
	mu   sync.Mutex
	errs []error
	seen []resilience.Attempt
	at   []time.Time
}

func (s *script) attempt(_ context.Context, a resilience.Attempt) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen = append(s.seen, a)
	s.at = append(s.at, time.Now())
	if len(s.errs) == 0 {
		return nil
	}
	err := s.errs[0]
	s.errs = s.errs[1:]
	return err
}

func repeat(err error, n int) []error {
	out := make([]error, n)
	for i := range out {
		out[i] = err
	}
	return out
}

func TestDoOutcomes(t *testing.T) {
	tests := []struct {
		name         string
		errs         []error
		maxAttempts  int
		wantAttempts int
		wantKind     error // nil: success
	}{
		{"first try", nil, 5, 1, nil},
		{"retries then success", repeat(errRetry, 3), 5, 4, nil},
		{"unclassified errors are retried", []error{errors.New("boom")}, 5, 2, nil},
		{"permanent stops at once", []error{errPerm, errRetry}, 5, 1, resilience.ErrPermanent},
		{"permanent after retries", []error{errRetry, errPerm}, 5, 2, resilience.ErrPermanent},
		{"exhausted after max_attempts", repeat(errRetry, 10), 3, 3, resilience.ErrExhausted},
		{"one attempt allowed", []error{errRetry}, 1, 1, resilience.ErrExhausted},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := fastConfig()
			c.Retry.MaxAttempts = tt.maxAttempts
			p := newPolicy(t, c, resilience.Options{Name: "t"})
			s := &script{errs: tt.errs}
			n, err := p.Do(t.Context(), s.attempt)
			if n != tt.wantAttempts || len(s.seen) != tt.wantAttempts {
				t.Fatalf("attempts = %d (seen %d), want %d", n, len(s.seen), tt.wantAttempts)
			}
			for i, a := range s.seen {
				if a.N != i+1 || a.BreakerState != gobreaker.StateClosed {
					t.Errorf("attempt %d = %+v, want N=%d in closed", i, a, i+1)
				}
			}
			if tt.wantKind == nil {
				if err != nil {
					t.Fatalf("err = %v, want success", err)
				}
				return
			}
			if !errors.Is(err, tt.wantKind) {
				t.Fatalf("err = %v, want it to wrap %v", err, tt.wantKind)
			}
			var ve *vendorErr
			if !errors.As(err, &ve) {
				t.Fatalf("err = %v does not wrap the last attempt's error", err)
			}
			other := resilience.ErrExhausted
			if tt.wantKind == resilience.ErrExhausted {
				other = resilience.ErrPermanent
			}
			if errors.Is(err, other) || errors.Is(err, context.Canceled) {
				t.Fatalf("err = %v wraps the wrong kind", err)
			}
		})
	}
}

func TestBackoffIsCappedFullJitter(t *testing.T) {
	c := fastConfig()
	c.Retry = resilience.Retry{MaxAttempts: 8, InitialInterval: time.Millisecond, MaxInterval: 4 * time.Millisecond}
	p := newPolicy(t, c, resilience.Options{})
	s := &script{errs: repeat(errRetry, 7)}
	if _, err := p.Do(t.Context(), s.attempt); err != nil {
		t.Fatal(err)
	}
	if s.seen[0].Backoff != 0 {
		t.Errorf("first attempt waited %v", s.seen[0].Backoff)
	}
	for _, a := range s.seen[1:] {
		ceil := min(time.Millisecond<<(a.N-2), 4*time.Millisecond)
		if a.Backoff < 0 || a.Backoff > ceil || a.RetryAfter {
			t.Errorf("attempt %d backoff %v (retry-after %v), want within [0, %v]", a.N, a.Backoff, a.RetryAfter, ceil)
		}
	}
}

func TestRetryAfter(t *testing.T) {
	tests := []struct {
		name        string
		after       time.Duration
		maxInterval time.Duration
		want        time.Duration
	}{
		{"honoured when larger than the backoff", 30 * time.Millisecond, time.Second, 30 * time.Millisecond},
		{"capped at max_interval", time.Hour, 40 * time.Millisecond, 40 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := fastConfig()
			c.Retry.MaxInterval = tt.maxInterval
			p := newPolicy(t, c, resilience.Options{})
			s := &script{errs: []error{&vendorErr{retry: true, after: tt.after}}}
			if _, err := p.Do(t.Context(), s.attempt); err != nil {
				t.Fatal(err)
			}
			a := s.seen[1]
			if a.Backoff != tt.want || !a.RetryAfter {
				t.Fatalf("second attempt waited %v (retry-after %v), want %v honoured", a.Backoff, a.RetryAfter, tt.want)
			}
			if gap := s.at[1].Sub(s.at[0]); gap < tt.want {
				t.Fatalf("attempts %v apart, want ≥ %v", gap, tt.want)
			}
		})
	}
}

func TestMaxElapsed(t *testing.T) {
	c := fastConfig()
	c.Retry = resilience.Retry{MaxAttempts: 100, InitialInterval: time.Millisecond, MaxInterval: time.Second, MaxElapsed: 150 * time.Millisecond}
	p := newPolicy(t, c, resilience.Options{})
	// Each failure asks for 100ms: the second retry would end past 150ms.
	s := &script{errs: repeat(&vendorErr{retry: true, after: 100 * time.Millisecond}, 100)}
	n, err := p.Do(t.Context(), s.attempt)
	if !errors.Is(err, resilience.ErrExhausted) || n != 2 {
		t.Fatalf("Do = %d, %v; want 2 attempts and ErrExhausted", n, err)
	}
	if !strings.Contains(err.Error(), "max_elapsed") {
		t.Fatalf("error %q does not say max_elapsed ended it", err)
	}
}

// transitions records breaker state changes on a channel.
func transitions() (chan string, func(from, to gobreaker.State)) {
	ch := make(chan string, 32)
	return ch, func(from, to gobreaker.State) { ch <- from.String() + "->" + to.String() }
}

func expectTransitions(t *testing.T, ch chan string, want ...string) {
	t.Helper()
	for _, w := range want {
		select {
		case got := <-ch:
			if got != w {
				t.Fatalf("transition %q, want %q", got, w)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no transition %q", w)
		}
	}
}

func TestBreakerOpensWaitsAndRecovers(t *testing.T) {
	const open = 200 * time.Millisecond
	c := fastConfig()
	// No max_elapsed claim here: with one caller the wait ends in a probe
	// and a good probe ends Do before the budget is checked.
	// TestBreakerWaitSpendsNoElapsedBudget checks that budget.
	c.Retry = resilience.Retry{MaxAttempts: 10, InitialInterval: time.Millisecond, MaxInterval: time.Millisecond}
	c.Breaker.ConsecutiveFailures = 3
	c.Breaker.OpenTimeout = open
	ch, onChange := transitions()
	p := newPolicy(t, c, resilience.Options{Name: "vendor", OnStateChange: onChange})

	s := &script{errs: repeat(errRetry, 3)}
	n, err := p.Do(t.Context(), s.attempt)
	if err != nil || n != 4 {
		t.Fatalf("Do = %d, %v; want success on the 4th attempt", n, err)
	}
	expectTransitions(t, ch, "closed->open", "open->half-open", "half-open->closed")
	probe := s.seen[3]
	if probe.BreakerState != gobreaker.StateHalfOpen {
		t.Errorf("4th attempt ran in %q, want half-open probe", probe.BreakerState)
	}
	if gap := s.at[3].Sub(s.at[2]); gap < open {
		t.Errorf("an attempt was made %v after the breaker opened, before open_timeout %v", gap, open)
	}
	if probe.BreakerWait < open/2 || probe.BreakerWait > open+2*time.Second {
		t.Errorf("BreakerWait = %v, want about %v", probe.BreakerWait, open)
	}
	if p.State() != gobreaker.StateClosed {
		t.Errorf("State = %q after a good probe", p.State())
	}
}

func TestBreakerBlocksOtherCallersWhileOpen(t *testing.T) {
	const open = 150 * time.Millisecond
	c := fastConfig()
	c.Retry.MaxAttempts = 1
	c.Breaker.ConsecutiveFailures = 2
	c.Breaker.OpenTimeout = open
	ch, onChange := transitions()
	p := newPolicy(t, c, resilience.Options{OnStateChange: onChange})

	for range 2 {
		if _, err := p.Do(t.Context(), func(context.Context, resilience.Attempt) error { return errRetry }); !errors.Is(err, resilience.ErrExhausted) {
			t.Fatalf("Do = %v, want exhausted", err)
		}
	}
	expectTransitions(t, ch, "closed->open")
	opened := time.Now()
	if p.State() != gobreaker.StateOpen {
		t.Fatalf("State = %q, want open", p.State())
	}

	// Several callers wait; exactly one probes first, the rest follow once
	// it closed the breaker.
	var (
		mu     sync.Mutex
		states []gobreaker.State
		first  time.Time
		wg     sync.WaitGroup
	)
	for range 4 {
		wg.Go(func() {
			_, err := p.Do(t.Context(), func(_ context.Context, a resilience.Attempt) error {
				mu.Lock()
				defer mu.Unlock()
				if first.IsZero() {
					first = time.Now()
				}
				states = append(states, a.BreakerState)
				return nil
			})
			if err != nil {
				t.Errorf("Do after recovery: %v", err)
			}
		})
	}
	wg.Wait()
	if first.Sub(opened) < open-5*time.Millisecond {
		t.Errorf("first attempt %v after opening, want ≥ %v", first.Sub(opened), open)
	}
	half := 0
	for _, s := range states {
		if s == gobreaker.StateHalfOpen {
			half++
		}
	}
	if len(states) != 4 || half != 1 {
		t.Errorf("attempt states %v, want one half-open probe and three closed", states)
	}
	expectTransitions(t, ch, "open->half-open", "half-open->closed")
}

func TestFailedProbeReopens(t *testing.T) {
	c := fastConfig()
	c.Retry = resilience.Retry{MaxAttempts: 10, InitialInterval: time.Millisecond, MaxInterval: time.Millisecond}
	c.Breaker.ConsecutiveFailures = 2
	c.Breaker.OpenTimeout = 30 * time.Millisecond
	ch, onChange := transitions()
	p := newPolicy(t, c, resilience.Options{OnStateChange: onChange})
	s := &script{errs: repeat(errRetry, 3)} // two trip it, the probe fails too
	n, err := p.Do(t.Context(), s.attempt)
	if err != nil || n != 4 {
		t.Fatalf("Do = %d, %v; want success on the 4th attempt", n, err)
	}
	expectTransitions(t, ch, "closed->open", "open->half-open", "half-open->open", "open->half-open", "half-open->closed")
	if s.seen[2].BreakerState != gobreaker.StateHalfOpen || s.seen[3].BreakerState != gobreaker.StateHalfOpen {
		t.Errorf("states %v, %v; want two half-open probes", s.seen[2].BreakerState, s.seen[3].BreakerState)
	}
}

func TestPermanentErrorsDoNotTripBreaker(t *testing.T) {
	c := fastConfig()
	c.Breaker.ConsecutiveFailures = 2
	ch, onChange := transitions()
	p := newPolicy(t, c, resilience.Options{OnStateChange: onChange})
	for range 5 {
		if n, err := p.Do(t.Context(), func(context.Context, resilience.Attempt) error { return errPerm }); n != 1 || !errors.Is(err, resilience.ErrPermanent) {
			t.Fatalf("Do = %d, %v; want one permanent failure", n, err)
		}
	}
	if p.State() != gobreaker.StateClosed || len(ch) != 0 {
		t.Fatalf("State = %q with %d transitions; permanent failures must not trip it", p.State(), len(ch))
	}
}

func TestFailureRatioTrips(t *testing.T) {
	c := fastConfig()
	c.Retry.MaxAttempts = 1
	c.Breaker = resilience.Breaker{FailureRatio: 0.5, MinRequests: 4, Interval: time.Minute, OpenTimeout: time.Minute}
	p := newPolicy(t, c, resilience.Options{})
	outcomes := []error{nil, errRetry, nil, errRetry} // 2 of 4 failed
	for i, o := range outcomes {
		if p.State() != gobreaker.StateClosed {
			t.Fatalf("open after %d requests", i)
		}
		_, _ = p.Do(t.Context(), func(context.Context, resilience.Attempt) error { return o })
	}
	if p.State() != gobreaker.StateOpen {
		t.Fatalf("State = %q, want open at a 50%% failure ratio", p.State())
	}
}

func TestCancelStopsWaits(t *testing.T) {
	tests := []struct {
		name   string
		config func(*resilience.Config)
		err    error
	}{
		{"backoff", func(c *resilience.Config) { c.Retry.MaxInterval = time.Hour }, &vendorErr{retry: true, after: time.Hour}},
		{"open breaker", func(c *resilience.Config) { c.Breaker.ConsecutiveFailures = 1; c.Breaker.OpenTimeout = time.Hour }, errRetry},
		{"rate limiter", func(c *resilience.Config) { c.RateLimit = resilience.RateLimit{PerSecond: 0.001, Burst: 1} }, errRetry},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := fastConfig()
			c.Retry.MaxAttempts = 10
			tt.config(&c)
			p := newPolicy(t, c, resilience.Options{})
			ctx, cancel := context.WithCancel(t.Context())
			attempted := make(chan struct{}, 10)
			type result struct {
				n   int
				err error
			}
			done := make(chan result, 1)
			go func() {
				n, err := p.Do(ctx, func(context.Context, resilience.Attempt) error {
					attempted <- struct{}{}
					return tt.err
				})
				done <- result{n, err}
			}()
			<-attempted
			cancel()
			select {
			case r := <-done:
				if r.n != 1 || !errors.Is(r.err, context.Canceled) {
					t.Fatalf("Do = %d, %v; want 1 attempt and context.Canceled", r.n, r.err)
				}
				if errors.Is(r.err, resilience.ErrExhausted) || errors.Is(r.err, resilience.ErrPermanent) {
					t.Fatalf("cancelled Do says %v: it would be dead-lettered", r.err)
				}
				var ve *vendorErr
				if !errors.As(r.err, &ve) {
					t.Fatalf("cancelled Do lost the last attempt's error: %v", r.err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Do kept waiting after cancel")
			}
		})
	}
}

func TestCancelledAttemptDoesNotTripBreaker(t *testing.T) {
	c := fastConfig()
	c.Breaker.ConsecutiveFailures = 1
	p := newPolicy(t, c, resilience.Options{})
	ctx, cancel := context.WithCancel(t.Context())
	_, err := p.Do(ctx, func(ctx context.Context, _ resilience.Attempt) error {
		cancel()
		return ctx.Err()
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Do = %v, want context.Canceled", err)
	}
	if p.State() != gobreaker.StateClosed {
		t.Fatalf("State = %q: our own cancellation opened the breaker", p.State())
	}
}

func TestRateLimit(t *testing.T) {
	c := fastConfig()
	c.RateLimit = resilience.RateLimit{PerSecond: 50, Burst: 1}
	p := newPolicy(t, c, resilience.Options{})
	var calls atomic.Int32
	start := time.Now()
	var wg sync.WaitGroup
	for range 6 {
		wg.Go(func() {
			if _, err := p.Do(t.Context(), func(context.Context, resilience.Attempt) error { calls.Add(1); return nil }); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	// One token at once, then one every 20ms.
	if el := time.Since(start); el < 95*time.Millisecond || calls.Load() != 6 {
		t.Fatalf("6 attempts at 50/s took %v (%d calls), want ≥ 100ms", el, calls.Load())
	}
}

func TestNewRejectsInvalidConfig(t *testing.T) {
	c := fastConfig()
	c.Retry.MaxAttempts = 0
	if _, err := resilience.New(c, resilience.Options{}); err == nil || !strings.Contains(err.Error(), "retry.max_attempts") {
		t.Fatalf("New = %v, want a retry.max_attempts error", err)
	}
}

func TestSyncIntervalValidation(t *testing.T) {
	tests := []struct {
		name    string
		sync    time.Duration
		open    time.Duration
		wantErr string // "" means valid
	}{
		{"default", 0, time.Second, ""},
		{"default under a short open_timeout", 0, 100 * time.Millisecond, ""},
		{"equal to open_timeout", time.Second, time.Second, ""},
		{"negative", -time.Millisecond, time.Second, "breaker.sync_interval: must be > 0"},
		{"longer than open_timeout", 2 * time.Second, time.Second, "breaker.sync_interval: must be ≤ breaker.open_timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := resilience.Defaults()
			c.Breaker.SyncInterval, c.Breaker.OpenTimeout = tt.sync, tt.open
			err := c.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate = %v, want valid", err)
				}
				return
			}
			var fe *field.Error
			if !errors.As(err, &fe) || fe.Field != "breaker.sync_interval" || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

// TestFailedProbesSpendNoBudget: the vendor stays down for many open
// periods. Each failed half-open probe re-opens the breaker and spends
// neither retry.max_attempts nor retry.max_elapsed, so the request is
// still there to succeed once the vendor is back; a permanent error on a
// probe still ends it at once.
func TestFailedProbesSpendNoBudget(t *testing.T) {
	const (
		open   = 20 * time.Millisecond
		trip   = 2 // consecutive failures that open the breaker
		probes = 8 // failed probes before the vendor recovers
	)
	tests := []struct {
		name        string
		maxAttempts int
		maxElapsed  time.Duration
		latency     time.Duration // of each failed probe
		probeErr    error         // what the failed probes answer
		wantKind    error         // nil: success after the outage
	}{
		// 2 attempts trip it; 8 probes would be attempts 3 to 10.
		{"max_attempts", 3, 0, 0, errRetry, nil},
		// 8 probes of 15ms each outlast max_elapsed on their own.
		{"max_elapsed", 100, 60 * time.Millisecond, 15 * time.Millisecond, errRetry, nil},
		{"permanent error on a probe", 3, 0, 0, errPerm, resilience.ErrPermanent},
	}
	stores := []struct {
		name  string
		store func() gobreaker.SharedDataStore
	}{
		{"local", func() gobreaker.SharedDataStore { return nil }},
		{"shared", func() gobreaker.SharedDataStore { return newMemStore() }},
	}
	for _, st := range stores {
		for _, tt := range tests {
			t.Run(st.name+"/"+tt.name, func(t *testing.T) {
				c := fastConfig()
				c.Retry = resilience.Retry{MaxAttempts: tt.maxAttempts, InitialInterval: time.Millisecond,
					MaxInterval: 2 * time.Millisecond, MaxElapsed: tt.maxElapsed}
				c.Breaker.ConsecutiveFailures = trip
				c.Breaker.OpenTimeout = open
				ch, onChange := transitions()
				p := newPolicy(t, c, resilience.Options{Name: "labelbox", Store: st.store(), OnStateChange: onChange})

				var (
					seen       []resilience.Attempt // Resume calls attempt sequentially
					began, end []time.Time          // each attempt's start and end
					saved      []time.Duration      // Progress.Elapsed after each retried failure
				)
				save := func(pr resilience.Progress) { saved = append(saved, pr.Elapsed) }
				n, err := p.Resume(t.Context(), resilience.Progress{}, save, func(ctx context.Context, a resilience.Attempt) error {
					seen = append(seen, a)
					began = append(began, time.Now())
					defer func() { end = append(end, time.Now()) }()
					switch {
					case len(seen) <= trip:
						return errRetry
					case a.BreakerState != gobreaker.StateHalfOpen:
						return errors.New("an attempt after the trip was not a half-open probe")
					case len(seen) <= trip+probes:
						if tt.latency > 0 { // the down vendor is slow to answer
							if err := sleepCtx(ctx, tt.latency); err != nil {
								return err
							}
						}
						return tt.probeErr
					default:
						return nil // the vendor is back
					}
				})

				if tt.wantKind != nil {
					if !errors.Is(err, tt.wantKind) || n != trip+1 {
						t.Fatalf("Do = %d, %v; want %v on the first probe (attempt %d)", n, err, tt.wantKind, trip+1)
					}
					return
				}
				if err != nil {
					t.Fatalf("Do = %d attempts, %v; want success after %d failed probes", n, err, probes)
				}
				if want := trip + probes + 1; n != want || len(seen) != want {
					t.Fatalf("Do made %d attempts (saw %d), want %d", n, len(seen), want)
				}
				for i, a := range seen {
					if a.N != i+1 {
						t.Errorf("attempt %d has N=%d: N must count every attempt, probes included", i+1, a.N)
					}
				}
				// Only Do's end checks max_elapsed, and a good probe ends it
				// first: the saved progress is what shows whether the open
				// periods or failed probes were counted.
				// Each failed probe takes tt.latency; none of it, nor the
				// open periods between probes, may add to Elapsed. (The
				// trip's own attempts and backoffs do count, and on a busy
				// machine can by themselves exceed max_elapsed, so the
				// check is on growth from one probe to the next, not on
				// the total.)
				if tt.maxElapsed > 0 {
					if len(saved) < trip+probes-1 {
						t.Fatalf("saved progress %d times, want once per retried failure (%d)", len(saved), trip+probes-1)
					}
					base := saved[trip] // after the first failed probe
					for i, e := range saved[trip+1:] {
						if e-base > tt.latency/3 {
							t.Errorf("progress saved after probe %d has Elapsed %v, %v more than after the first: breaker waits or failed probes were counted", i+2, e, e-base)
						}
					}
				}
				// Every probe came after its own open period: the breaker
				// opened once the attempt before it ended, so the probe
				// began at least open_timeout later. (How much of that gap
				// was a breaker wait rather than backoff or a busy
				// machine's scheduling is not fixed, so it is not checked.)
				for i, a := range seen[trip:] {
					i += trip
					if gap := began[i].Sub(end[i-1]); a.BreakerState != gobreaker.StateHalfOpen || gap < open {
						t.Errorf("attempt %d in %q began %v after the failure that opened the breaker, want a half-open probe after at least %v", a.N, a.BreakerState, gap, open)
					}
				}
				want := []string{"closed->open"}
				for range probes {
					want = append(want, "open->half-open", "half-open->open")
				}
				want = append(want, "open->half-open", "half-open->closed")
				expectTransitions(t, ch, want...)
				if p.State() != gobreaker.StateClosed {
					t.Fatalf("State = %q after the vendor recovered", p.State())
				}
			})
		}
	}
}

// sleepCtx stands in for a slow vendor answer.
func sleepCtx(ctx context.Context, d time.Duration) error {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-tm.C:
		return nil
	}
}

// pendingErr is an attempt error that says the vendor is still at work,
// as a pipeline.DeliveryError with InProgress does.
type pendingErr struct{ vendorErr }

func (e *pendingErr) Pending() bool { return true }

// An attempt whose vendor is still doing the work (an asynchronous import
// being followed) spends no retry budget and does not count against the
// breaker: far more of them than max_attempts and consecutive_failures
// allow still end in success, the breaker never leaves closed, and a real
// failure afterwards still has the whole budget.
func TestPendingSpendsNoBudget(t *testing.T) {
	for _, st := range []struct {
		name  string
		store func() gobreaker.SharedDataStore
	}{
		{"local", func() gobreaker.SharedDataStore { return nil }},
		{"shared", func() gobreaker.SharedDataStore { return newMemStore() }},
	} {
		t.Run(st.name, func(t *testing.T) {
			c := fastConfig()
			c.Retry = resilience.Retry{MaxAttempts: 3, InitialInterval: time.Millisecond, MaxInterval: 2 * time.Millisecond,
				MaxElapsed: 10 * time.Second}
			c.Breaker.ConsecutiveFailures = 3
			ch, onChange := transitions()
			p := newPolicy(t, c, resilience.Options{Name: "cvat", Store: st.store(), OnStateChange: onChange})
			pend := &pendingErr{vendorErr{retry: true}}
			// 10 pending attempts, then 2 failures: the third attempt of
			// max_attempts 3 succeeds, and the breaker (3 in a row) stays
			// closed.
			s := &script{errs: append(repeat(pend, 10), errRetry, errRetry)}
			var saved []resilience.Progress
			n, err := p.Resume(t.Context(), resilience.Progress{}, func(pr resilience.Progress) { saved = append(saved, pr) }, s.attempt)
			if err != nil || n != 13 {
				t.Fatalf("Resume = %d, %v; want success on attempt 13", n, err)
			}
			if last := saved[len(saved)-1]; last.Spent != 2 || last.Attempts != 12 {
				t.Errorf("progress %+v, want 12 attempts of which 2 spent", last)
			}
			select {
			case tr := <-ch:
				t.Errorf("breaker moved %v: pending attempts are not failures", tr)
			default:
			}

			// The same with 3 real failures is exhausted: pending is what
			// made the difference.
			s = &script{errs: repeat(errRetry, 3)}
			if _, err := p.Resume(t.Context(), resilience.Progress{}, nil, s.attempt); !errors.Is(err, resilience.ErrExhausted) {
				t.Errorf("3 failures with max_attempts 3: %v, want exhausted", err)
			}
		})
	}
}
