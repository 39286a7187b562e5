package resilience_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/labelpipe/labelpipe/pipeline/resilience"
)

// TestErrorSaysWhatEndedIt: Do's error names how many attempts were made
// (one "attempt", several "attempts"), why it stopped, and wraps both the
// reason and the last attempt's error.
func TestErrorSaysWhatEndedIt(t *testing.T) {
	errPaused := errors.New("paused")
	tests := []struct {
		name        string
		maxAttempts int
		errs        []error
		gate        func(context.Context) error
		cancel      bool          // the attempt cancels the caller's ctx
		interval    time.Duration // the backoff, when not fastConfig's
		wantN       int
		wantIs      []error
		wantNotIs   []error
		want        []string
		dont        []string
	}{
		{name: "exhausted after one attempt", maxAttempts: 1, errs: []error{errRetry}, wantN: 1,
			wantIs: []error{resilience.ErrExhausted, errRetry},
			want:   []string{"retries exhausted after 1 attempt in ", ": vendor said no"}, dont: []string{"attempts", "max_elapsed"}},
		{name: "exhausted after two attempts", maxAttempts: 2, errs: repeat(errRetry, 2), wantN: 2,
			wantIs: []error{resilience.ErrExhausted, errRetry},
			want:   []string{"retries exhausted after 2 attempts in "}, dont: []string{"max_elapsed"}},
		{name: "permanent", maxAttempts: 3, errs: []error{errPerm}, wantN: 1,
			wantIs: []error{resilience.ErrPermanent, errPerm},
			want:   []string{"permanent failure after 1 attempt in "}, dont: []string{"attempts"}},
		{name: "gate refuses the first attempt", maxAttempts: 3, gate: func(context.Context) error { return errPaused }, wantN: 0,
			wantIs: []error{errPaused}, wantNotIs: []error{resilience.ErrExhausted, resilience.ErrPermanent, errRetry},
			want: []string{"delivery stopped after 0 attempts: paused"}, dont: []string{"last error"}},
		{name: "cancelled during an attempt", maxAttempts: 3, errs: []error{errRetry}, cancel: true, wantN: 1,
			wantIs: []error{context.Canceled, errRetry}, wantNotIs: []error{resilience.ErrExhausted, resilience.ErrPermanent},
			want: []string{"delivery stopped after 1 attempts: context canceled (last error: vendor said no)"}},
		// A timer of a nanosecond is as ready as the cancelled ctx: the
		// cancellation must still win, every time.
		{name: "cancelled during an attempt, nanosecond backoff", maxAttempts: 3, errs: repeat(errRetry, 3), cancel: true, interval: time.Nanosecond, wantN: 1,
			wantIs: []error{context.Canceled, errRetry}, wantNotIs: []error{resilience.ErrExhausted, resilience.ErrPermanent}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := fastConfig()
			c.Retry.MaxAttempts = tt.maxAttempts
			if tt.interval > 0 {
				c.Retry.InitialInterval, c.Retry.MaxInterval = tt.interval, tt.interval
			}
			p := newPolicy(t, c, resilience.Options{Gate: tt.gate})
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			s := &script{errs: tt.errs}
			n, err := p.Do(ctx, func(ctx context.Context, a resilience.Attempt) error {
				if tt.cancel {
					cancel()
				}
				return s.attempt(ctx, a)
			})
			if n != tt.wantN || err == nil {
				t.Fatalf("Do = %d, %v; want %d attempts and an error", n, err, tt.wantN)
			}
			for _, target := range tt.wantIs {
				if !errors.Is(err, target) {
					t.Errorf("error %q does not wrap %v", err, target)
				}
			}
			for _, target := range tt.wantNotIs {
				if errors.Is(err, target) {
					t.Errorf("error %q wraps %v", err, target)
				}
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			for _, d := range tt.dont {
				if strings.Contains(err.Error(), d) {
					t.Errorf("error %q says %q", err, d)
				}
			}
		})
	}
}

// TestRateLimitBurst: rate_limit.burst attempts start at once (1 when it is
// 0), the next one waits for a token, and a caller whose ctx ends while it
// waits makes no attempt.
func TestRateLimitBurst(t *testing.T) {
	for _, tt := range []struct {
		name   string
		burst  int
		atOnce int
	}{
		{"burst unset", 0, 1},
		{"burst 1", 1, 1},
		{"burst 3", 3, 3},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := fastConfig()
			// One token every 100s: only the burst can go within the test.
			c.RateLimit = resilience.RateLimit{PerSecond: 0.01, Burst: tt.burst}
			p := newPolicy(t, c, resilience.Options{})
			for i := range tt.atOnce {
				ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
				_, err := p.Do(ctx, func(context.Context, resilience.Attempt) error { return nil })
				cancel()
				if err != nil {
					t.Fatalf("attempt %d of a burst of %d: %v", i+1, tt.atOnce, err)
				}
			}
			ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
			defer cancel()
			var attempted atomic.Bool
			n, err := p.Do(ctx, func(context.Context, resilience.Attempt) error { attempted.Store(true); return nil })
			if n != 0 || attempted.Load() || !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("attempt past the burst = %d, %v (attempted %v); want it held until its ctx ended, no attempt", n, err, attempted.Load())
			}
		})
	}
}

// TestFailureRatioCountsValidOutcomes: failure_ratio is failures over the
// requests whose outcome counts; cancelled attempts are not requests.
func TestFailureRatioCountsValidOutcomes(t *testing.T) {
	const excluded = "excluded" // the caller cancels during the attempt
	tests := []struct {
		name     string
		ratio    float64
		min      uint32
		outcomes []any // nil, errRetry or excluded
		want     []gobreaker.State
	}{
		{"below the ratio, then at it", 0.5, 3, []any{nil, nil, errRetry, errRetry},
			[]gobreaker.State{gobreaker.StateClosed, gobreaker.StateClosed, gobreaker.StateClosed, gobreaker.StateOpen}},
		{"cancelled attempts are not requests", 1, 1, []any{excluded, excluded, errRetry},
			[]gobreaker.State{gobreaker.StateClosed, gobreaker.StateClosed, gobreaker.StateOpen}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := fastConfig()
			c.Retry.MaxAttempts = 1
			c.Breaker = resilience.Breaker{FailureRatio: tt.ratio, MinRequests: tt.min, Interval: time.Minute, OpenTimeout: time.Minute}
			p := newPolicy(t, c, resilience.Options{})
			for i, o := range tt.outcomes {
				ctx, cancel := context.WithCancel(t.Context())
				_, _ = p.Do(ctx, func(ctx context.Context, _ resilience.Attempt) error {
					if o == excluded {
						cancel()
						return ctx.Err()
					}
					err, _ := o.(error)
					return err
				})
				cancel()
				if st := p.State(); st != tt.want[i] {
					t.Fatalf("after outcome %d (%v): State = %q, want %q", i+1, o, st, tt.want[i])
				}
			}
		})
	}
}

// TestBackoffCeilingDoubles: the backoff before attempt n is jittered over
// initial_interval·2^(n-2), capped at max_interval; many samples show both
// that it stays under that ceiling and that it reaches past the previous one.
func TestBackoffCeilingDoubles(t *testing.T) {
	const initial, maxInterval = time.Millisecond, 8 * time.Millisecond
	c := fastConfig()
	c.Retry = resilience.Retry{MaxAttempts: 7, InitialInterval: initial, MaxInterval: maxInterval}
	p := newPolicy(t, c, resilience.Options{})
	ceil := func(n int) time.Duration { return min(initial<<(n-2), maxInterval) }
	largest := map[int]time.Duration{} // by attempt number
	for range 25 {
		s := &script{errs: repeat(errRetry, 6)}
		if _, err := p.Do(t.Context(), s.attempt); err != nil {
			t.Fatal(err)
		}
		for _, a := range s.seen[1:] {
			if a.Backoff < 0 || a.Backoff > ceil(a.N) {
				t.Fatalf("attempt %d waited %v, want within [0, %v]", a.N, a.Backoff, ceil(a.N))
			}
			largest[a.N] = max(largest[a.N], a.Backoff)
		}
	}
	// Each sample is past half its ceiling with probability 1/2: 25 samples
	// that all stay under it happen once in 2^25.
	for n := 2; n <= 7; n++ {
		if largest[n] <= ceil(n)/2 {
			t.Errorf("attempt %d never waited more than %v in 25 tries (ceiling %v): the ceiling did not grow", n, largest[n], ceil(n))
		}
	}
}

// TestBackoffOfOneNanosecond: the smallest valid interval works.
func TestBackoffOfOneNanosecond(t *testing.T) {
	c := fastConfig()
	c.Retry = resilience.Retry{MaxAttempts: 5, InitialInterval: 1, MaxInterval: 1}
	p := newPolicy(t, c, resilience.Options{})
	s := &script{errs: repeat(errRetry, 4)}
	if n, err := p.Do(t.Context(), s.attempt); n != 5 || err != nil {
		t.Fatalf("Do = %d, %v; want success on the 5th attempt", n, err)
	}
	for _, a := range s.seen[1:] {
		if a.Backoff < 0 || a.Backoff > 1 {
			t.Fatalf("attempt %d waited %v, want at most 1ns", a.N, a.Backoff)
		}
	}
}

// TestOpenBreakerWaitEndsAtItsExpiry: a caller behind an open breaker
// sleeps until the open period ends and then probes: one wake-up, not a
// poll. The gate, called before each try for admission, counts them.
func TestOpenBreakerWaitEndsAtItsExpiry(t *testing.T) {
	const open = 100 * time.Millisecond
	c := fastConfig()
	c.Retry.MaxAttempts = 1
	c.Breaker.ConsecutiveFailures = 1
	c.Breaker.OpenTimeout = open
	var tries atomic.Int32
	p := newPolicy(t, c, resilience.Options{Gate: func(context.Context) error { tries.Add(1); return nil }})
	for round := range 3 {
		if _, err := p.Do(t.Context(), func(context.Context, resilience.Attempt) error { return errRetry }); !errors.Is(err, resilience.ErrExhausted) {
			t.Fatalf("round %d: tripping Do = %v", round, err)
		}
		if st := p.State(); st != gobreaker.StateOpen {
			t.Fatalf("round %d: State = %q after a failure, want open", round, st)
		}
		tries.Store(0)
		var got resilience.Attempt
		if _, err := p.Do(t.Context(), func(_ context.Context, a resilience.Attempt) error { got = a; return nil }); err != nil {
			t.Fatalf("round %d: Do = %v", round, err)
		}
		if got.BreakerState != gobreaker.StateHalfOpen || got.BreakerWait <= 0 {
			t.Fatalf("round %d: attempt %+v, want a half-open probe after a wait", round, got)
		}
		if n := tries.Load(); n != 2 {
			t.Fatalf("round %d: %d tries for admission, want 2 (refused while open, then the probe at its expiry)", round, n)
		}
	}
}

// TestFailedProbeBackoffIsNotSavedAsSpent: the progress saved after failed
// half-open probes counts neither the probes nor the backoff after them,
// so a request resumed elsewhere still has its max_elapsed budget.
func TestFailedProbeBackoffIsNotSavedAsSpent(t *testing.T) {
	const (
		wait   = 100 * time.Millisecond // every failure's Retry-After, so every backoff
		probes = 4
	)
	c := fastConfig()
	c.Retry = resilience.Retry{MaxAttempts: 100, InitialInterval: time.Millisecond, MaxInterval: wait, MaxElapsed: time.Hour}
	c.Breaker.ConsecutiveFailures = 1
	c.Breaker.OpenTimeout = 20 * time.Millisecond // over before each backoff is
	p := newPolicy(t, c, resilience.Options{})
	var saved []resilience.Progress
	s := &script{errs: repeat(&vendorErr{retry: true, after: wait}, 1+probes)}
	n, err := p.Resume(t.Context(), resilience.Progress{}, func(pr resilience.Progress) { saved = append(saved, pr) }, s.attempt)
	if n != probes+2 || err != nil {
		t.Fatalf("Resume = %d, %v; want success on the probe after %d failed ones", n, err, probes)
	}
	for _, a := range s.seen[1:] {
		if a.BreakerState != gobreaker.StateHalfOpen {
			t.Fatalf("attempt %d in state %q, want every attempt after the trip a probe", a.N, a.BreakerState)
		}
	}
	if len(saved) != probes+1 {
		t.Fatalf("saved %d times, want after each of the %d failures", len(saved), probes+1)
	}
	// Only the first failure's backoff was spent; each failed probe and its
	// backoff would add another 2·wait were they counted.
	for i, pr := range saved {
		if pr.Elapsed < 0 || pr.Elapsed > wait+wait/2 {
			t.Errorf("progress %d: %+v, want Elapsed at most %v (one counted backoff)", i+1, pr, wait+wait/2)
		}
	}
	if last := saved[len(saved)-1]; last.Spent != 1 || last.Attempts != probes+1 {
		t.Errorf("last progress %+v, want %d attempts of which 1 spent", last, probes+1)
	}
}

// TestDefaultSyncIntervalTrustsAQuietView: with sync_interval unset a
// replica does not read the store before every attempt while the breaker
// is closed and quiet (it trusts its view for the default 250ms).
func TestDefaultSyncIntervalTrustsAQuietView(t *testing.T) {
	c := fastConfig()
	c.Retry.MaxAttempts = 1
	c.Breaker = resilience.Breaker{ConsecutiveFailures: 3, OpenTimeout: time.Minute}
	store := newMemStore()
	ps, cs := replicas(t, c, func() gobreaker.SharedDataStore { return store }, resilience.Options{})
	p := ps[0]
	if _, err := p.Do(t.Context(), func(context.Context, resilience.Attempt) error { return nil }); err != nil {
		t.Fatal(err)
	}
	cs[0].reset()
	start := time.Now()
	const runs = 10
	for range runs {
		if _, err := p.Do(t.Context(), func(context.Context, resilience.Attempt) error { return nil }); err != nil {
			t.Fatal(err)
		}
	}
	// Each sync interval may cost one read; ten quick successes far fewer
	// than ten.
	el := time.Since(start)
	if most := int64(el/(250*time.Millisecond)) + 1; cs[0].gets.Load() > most || cs[0].sets.Load() != 0 {
		t.Fatalf("%d quiet successes in %v made %d reads, %d writes; want at most %d reads, no writes",
			runs, el, cs[0].gets.Load(), cs[0].sets.Load(), most)
	}
}

// TestSharedBreakerWaitsForABusyLock: while another holder has the
// store's lock, recording an outcome retries the lock with a growing pause
// (not a spin, not giving up at once) and records it once the lock is free.
func TestSharedBreakerWaitsForABusyLock(t *testing.T) {
	const lockKey = "gobreaker:mutex:labelbox"
	c := fastConfig()
	c.Retry.MaxAttempts = 1
	c.Breaker = resilience.Breaker{ConsecutiveFailures: 3, OpenTimeout: time.Minute, SyncInterval: time.Minute}
	store := newMemStore()
	ps, cs := replicas(t, c, func() gobreaker.SharedDataStore { return store }, resilience.Options{})
	p := ps[0]
	if st := p.State(); st != gobreaker.StateClosed {
		t.Fatalf("State = %q on a new breaker", st)
	}
	if err := store.Lock(lockKey); err != nil {
		t.Fatal(err)
	}
	cs[0].reset()
	done := make(chan error, 1)
	go func() {
		_, err := p.Do(t.Context(), func(context.Context, resilience.Attempt) error { return errRetry })
		done <- err
	}()
	// Let it find the lock busy a few times, then free it.
	deadline := time.Now().Add(5 * time.Second)
	for cs[0].locks.Load() < 3 {
		select {
		case err := <-done:
			t.Fatalf("Do = %v after %d lock tries: it gave up on a busy lock", err, cs[0].locks.Load())
		case <-time.After(time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d lock tries in 5s", cs[0].locks.Load())
		}
	}
	if err := store.Unlock(lockKey); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, resilience.ErrExhausted) {
			t.Fatalf("Do = %v, want the failure", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Do still waiting for a free lock")
	}
	// 5ms, 10ms, 20ms... apart: the lock was free by the 4th or 5th try.
	if n := cs[0].locks.Load(); n > 8 {
		t.Errorf("%d lock tries, want a few (with a growing pause between them)", n)
	}
	if st := sharedState(t, store); st.Counts.ConsecutiveFailures != 1 {
		t.Errorf("shared counts %+v, want the failure recorded once the lock was free", st.Counts)
	}
}

// waitFor polls cond every millisecond for up to 5s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestSharedBreakerProbesOnlyAfterReadingTheStore: a replica that last saw
// the breaker half-open, with no probe of its own out, reads the store
// before probing: another replica's failed probe has re-opened it, and no
// attempt goes out until that open period ends.
func TestSharedBreakerProbesOnlyAfterReadingTheStore(t *testing.T) {
	const open = time.Second
	c := fastConfig()
	c.Retry.MaxAttempts = 10
	c.Breaker = resilience.Breaker{ConsecutiveFailures: 1, OpenTimeout: open, SyncInterval: open}
	a, b, store := sharedPair(t, c)
	probing, release := make(chan struct{}), make(chan struct{})
	aDone := make(chan error, 1)
	go func() {
		_, err := a.Do(t.Context(), func(_ context.Context, at resilience.Attempt) error {
			switch at.N {
			case 1:
				return errRetry // trips it
			case 2: // the probe, failing once released
				close(probing)
				<-release
				return errRetry
			}
			return nil
		})
		aDone <- err
	}()
	select {
	case <-probing:
	case <-time.After(10 * time.Second):
		t.Fatal("A never probed")
	}
	if st := b.State(); st != gobreaker.StateHalfOpen {
		t.Fatalf("B sees %q while A probes, want half-open", st)
	}
	close(release)
	waitFor(t, "A's failed probe to re-open the breaker", func() bool { return sharedState(t, store).State == gobreaker.StateOpen })
	var got resilience.Attempt
	if _, err := b.Do(t.Context(), func(_ context.Context, at resilience.Attempt) error { got = at; return nil }); err != nil {
		t.Fatalf("B: Do = %v", err)
	}
	if got.BreakerWait <= 0 {
		t.Errorf("B attempted at once (%+v) on a breaker A's probe had re-opened", got)
	}
	select {
	case err := <-aDone:
		if err != nil {
			t.Fatalf("A: Do = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("A never finished")
	}
}

// TestSharedBreakerStaleProbeOutcomeIsNotCounted: a probe whose breaker
// was reset (by another replica) while it ran does not count in the new
// closed breaker: its failure neither starts a streak nor trips it.
func TestSharedBreakerStaleProbeOutcomeIsNotCounted(t *testing.T) {
	const open = 50 * time.Millisecond
	c := fastConfig()
	c.Retry.MaxAttempts = 10
	c.Breaker = resilience.Breaker{ConsecutiveFailures: 1, OpenTimeout: open, SyncInterval: open}
	a, b, store := sharedPair(t, c)
	probing, release := make(chan struct{}), make(chan struct{})
	type result struct {
		last resilience.Attempt
		err  error
	}
	aDone := make(chan result, 1)
	go func() {
		var last resilience.Attempt
		_, err := a.Do(t.Context(), func(_ context.Context, at resilience.Attempt) error {
			last = at
			switch at.N {
			case 1:
				return errRetry // trips it
			case 2: // the probe, failing after the reset
				close(probing)
				<-release
				return errRetry
			}
			return nil
		})
		aDone <- result{last, err}
	}()
	select {
	case <-probing:
	case <-time.After(10 * time.Second):
		t.Fatal("A never probed")
	}
	if _, err := b.Reset(t.Context()); err != nil {
		t.Fatalf("Reset: %v", err)
	}
	close(release)
	select {
	case r := <-aDone:
		if r.err != nil || r.last.N != 3 {
			t.Fatalf("A: Do = %v, last attempt %+v; want success on attempt 3", r.err, r.last)
		}
		if r.last.BreakerState != gobreaker.StateClosed || r.last.BreakerWait != 0 {
			t.Errorf("A's attempt after the stale probe: %+v, want closed at once (the stale failure re-opened it)", r.last)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("A never finished")
	}
	if st := sharedState(t, store); st.State != gobreaker.StateClosed || st.Counts.TotalFailures != 0 {
		t.Errorf("shared state %v %+v, want closed with no failure counted", st.State, st.Counts)
	}
}

// TestSharedStateWithTheStoreDown: State reports this replica's last view
// of the shared breaker while the store is down (an expired open period
// is half-open), not a default closed.
func TestSharedStateWithTheStoreDown(t *testing.T) {
	c := fastConfig()
	c.Retry.MaxAttempts = 1
	c.Breaker = resilience.Breaker{ConsecutiveFailures: 1, OpenTimeout: 50 * time.Millisecond, SyncInterval: 50 * time.Millisecond}
	store := newMemStore()
	p := newPolicy(t, c, resilience.Options{Name: "labelbox", Store: store})
	if _, err := p.Do(t.Context(), func(context.Context, resilience.Attempt) error { return errRetry }); !errors.Is(err, resilience.ErrExhausted) {
		t.Fatalf("Do = %v, want the failure", err)
	}
	if st := p.State(); st != gobreaker.StateOpen {
		t.Fatalf("State = %q after the trip, want open", st)
	}
	waitFor(t, "the open period to end", func() bool { return p.State() == gobreaker.StateHalfOpen })
	store.down.Store(true)
	if st := p.StateContext(t.Context()); st != gobreaker.StateHalfOpen {
		t.Fatalf("State = %q with the store down, want half-open (the last view, expired)", st)
	}
}

// TestWaitForAnotherCallersProbePolls: a caller refused because another
// caller's probe is out waits for that probe to end, checking the breaker
// again every open_timeout/10, but no more often than every 5ms (and at
// least every second). Its tries for admission (the gate is called before
// each) are spaced accordingly.
func TestWaitForAnotherCallersProbePolls(t *testing.T) {
	const (
		open  = 10 * time.Millisecond // open_timeout/10 is under the 5ms floor
		floor = 5 * time.Millisecond
		tries = 20
	)
	c := fastConfig()
	c.Retry.MaxAttempts = 1
	c.Breaker.ConsecutiveFailures = 1
	c.Breaker.OpenTimeout = open
	at := triesWhileAProbes(t, c, resilience.Options{}, tries)
	// Timers never fire early: tries-1 gaps of at least the floor. A poll
	// of a second (or open_timeout·10) would take far longer.
	span := at[tries-1].Sub(at[0])
	if low, high := (tries-1)*floor, (tries-1)*50*time.Millisecond; span < low || span > high {
		t.Fatalf("%d tries for admission in %v while another caller probed, want them %v apart (%v to %v in all)", tries, span, floor, low, high)
	}
}

type callerB struct{}

// triesWhileAProbes trips a policy built from c and opts (opts.Gate is
// set here), lets caller A's half-open probe hang, and records when
// caller B, refused meanwhile, tries for admission (the gate is called
// before each try): the first tries of them, once both callers are done.
func triesWhileAProbes(t *testing.T, c resilience.Config, opts resilience.Options, tries int) []time.Time {
	t.Helper()
	var (
		mu sync.Mutex
		at []time.Time // B's tries for admission
	)
	opts.Gate = func(ctx context.Context) error {
		if ctx.Value(callerB{}) != nil {
			mu.Lock()
			at = append(at, time.Now())
			mu.Unlock()
		}
		return nil
	}
	p := newPolicy(t, c, opts)
	if _, err := p.Do(t.Context(), func(context.Context, resilience.Attempt) error { return errRetry }); !errors.Is(err, resilience.ErrExhausted) {
		t.Fatalf("tripping Do = %v", err)
	}
	probing, release := make(chan struct{}), make(chan struct{})
	aDone := make(chan error, 1)
	go func() {
		_, err := p.Do(t.Context(), func(_ context.Context, a resilience.Attempt) error {
			if a.BreakerState == gobreaker.StateHalfOpen {
				close(probing)
				<-release
			}
			return nil
		})
		aDone <- err
	}()
	select {
	case <-probing:
	case <-time.After(10 * time.Second):
		t.Fatal("A never probed")
	}
	bDone := make(chan error, 1)
	go func() {
		_, err := p.Do(context.WithValue(t.Context(), callerB{}, true), func(context.Context, resilience.Attempt) error { return nil })
		bDone <- err
	}()
	waitFor(t, "B's tries while A probes", func() bool { mu.Lock(); defer mu.Unlock(); return len(at) >= tries })
	close(release)
	for _, ch := range []chan error{aDone, bDone} {
		select {
		case err := <-ch:
			if err != nil {
				t.Fatalf("Do = %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Do never finished")
		}
	}
	mu.Lock()
	defer mu.Unlock()
	return append([]time.Time(nil), at[:tries]...)
}

// TestCancelledProbeWakesTheNextCaller: a probe whose caller gives up
// says nothing about the vendor; the breaker stays half-open and a caller
// waiting for that probe is woken at once to probe in its place, not at
// its next poll (open_timeout/10 later).
func TestCancelledProbeWakesTheNextCaller(t *testing.T) {
	const (
		open = 4 * time.Second
		poll = open / 10
	)
	c := fastConfig()
	c.Retry.MaxAttempts = 1
	c.Breaker.ConsecutiveFailures = 1
	c.Breaker.OpenTimeout = open
	var (
		mu sync.Mutex
		at []time.Time // B's tries for admission
	)
	tries := func() int { mu.Lock(); defer mu.Unlock(); return len(at) }
	p := newPolicy(t, c, resilience.Options{Gate: func(ctx context.Context) error {
		if ctx.Value(callerB{}) != nil {
			mu.Lock()
			at = append(at, time.Now())
			mu.Unlock()
		}
		return nil
	}})
	if _, err := p.Do(t.Context(), func(context.Context, resilience.Attempt) error { return errRetry }); !errors.Is(err, resilience.ErrExhausted) {
		t.Fatalf("tripping Do = %v", err)
	}
	probing := make(chan struct{})
	aCtx, cancelA := context.WithCancel(t.Context())
	defer cancelA()
	aDone := make(chan error, 1)
	go func() {
		_, err := p.Do(aCtx, func(ctx context.Context, a resilience.Attempt) error {
			close(probing)
			<-ctx.Done()
			return ctx.Err()
		})
		aDone <- err
	}()
	select {
	case <-probing:
	case <-time.After(open + 10*time.Second):
		t.Fatal("A never probed")
	}
	var probedAt time.Time
	bDone := make(chan error, 1)
	go func() {
		_, err := p.Do(context.WithValue(t.Context(), callerB{}, true), func(_ context.Context, a resilience.Attempt) error {
			if a.BreakerState != gobreaker.StateHalfOpen {
				return fmt.Errorf("B's attempt in state %q, want a probe", a.BreakerState)
			}
			probedAt = time.Now()
			return nil
		})
		bDone <- err
	}()
	// Twice refused: B is waiting for A's probe.
	waitFor(t, "B to be refused while A probes", func() bool { return tries() >= 2 })
	cancelA()
	var cancelled time.Time
	select {
	case err := <-aDone:
		cancelled = time.Now()
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("A: Do = %v, want cancelled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("A never returned")
	}
	select {
	case err := <-bDone:
		if err != nil {
			t.Fatalf("B: Do = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("B never probed")
	}
	if wait := probedAt.Sub(cancelled); wait > poll/2 {
		t.Fatalf("B probed %v after A's probe was cancelled, want at once (not at its next poll, %v)", wait, poll)
	}
	if st := p.State(); st != gobreaker.StateClosed {
		t.Fatalf("State = %q after B's probe succeeded", st)
	}
}

// failing is a store whose reads or unlocks fail while told to.
type failing struct {
	gobreaker.SharedDataStore
	reads, unlocks atomic.Bool
}

var (
	errRead   = errors.New("read failed")
	errUnlock = errors.New("unlock failed")
)

func (f *failing) GetData(name string) ([]byte, error) {
	if f.reads.Load() {
		return nil, errRead
	}
	return f.SharedDataStore.GetData(name)
}

func (f *failing) Unlock(name string) error {
	if err := f.SharedDataStore.Unlock(name); err != nil {
		return err
	}
	if f.unlocks.Load() {
		return errUnlock
	}
	return nil
}

// TestResetReportsStoreErrors: a shared reset whose store lock cannot be
// released says so, and when its read failed too it reports the read,
// the first thing that went wrong.
func TestResetReportsStoreErrors(t *testing.T) {
	for _, tt := range []struct {
		name          string
		reads, unlock bool
		want          error
	}{
		{"unlock fails", false, true, errUnlock},
		{"read and unlock fail", true, true, errRead},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := fastConfig()
			store := &failing{SharedDataStore: newMemStore()}
			p := newPolicy(t, c, resilience.Options{Name: "labelbox", Store: store})
			if st := p.State(); st != gobreaker.StateClosed {
				t.Fatalf("State = %q on a new breaker", st)
			}
			store.reads.Store(tt.reads)
			store.unlocks.Store(tt.unlock)
			if _, err := p.Reset(t.Context()); !errors.Is(err, tt.want) {
				t.Fatalf("Reset = %v, want %v", err, tt.want)
			}
		})
	}
}

type requestKey struct{}

// ctxStore is a ContextStore recording which request each call was made
// for ("" for a call made without WithContext).
type ctxStore struct {
	*memStore
	mu   sync.Mutex
	seen []string
}

func (s *ctxStore) note(ctx context.Context) {
	v, _ := ctx.Value(requestKey{}).(string)
	s.mu.Lock()
	s.seen = append(s.seen, v)
	s.mu.Unlock()
}

func (s *ctxStore) WithContext(ctx context.Context) gobreaker.SharedDataStore {
	return &ctxCalls{s: s, ctx: ctx}
}

func (s *ctxStore) Lock(name string) error {
	s.note(context.Background())
	return s.memStore.Lock(name)
}
func (s *ctxStore) Unlock(name string) error {
	s.note(context.Background())
	return s.memStore.Unlock(name)
}
func (s *ctxStore) GetData(name string) ([]byte, error) {
	s.note(context.Background())
	return s.memStore.GetData(name)
}
func (s *ctxStore) SetData(name string, d []byte) error {
	s.note(context.Background())
	return s.memStore.SetData(name, d)
}

type ctxCalls struct {
	s   *ctxStore
	ctx context.Context
}

func (c *ctxCalls) Lock(name string) error   { c.s.note(c.ctx); return c.s.memStore.Lock(name) }
func (c *ctxCalls) Unlock(name string) error { c.s.note(c.ctx); return c.s.memStore.Unlock(name) }
func (c *ctxCalls) GetData(name string) ([]byte, error) {
	c.s.note(c.ctx)
	return c.s.memStore.GetData(name)
}
func (c *ctxCalls) SetData(name string, d []byte) error {
	c.s.note(c.ctx)
	return c.s.memStore.SetData(name, d)
}

// TestSharedBreakerCallsCarryTheRequestContext: with a ContextStore, every
// store call a delivery causes (reading, creating and recording the state)
// is made in that delivery's ctx, so that it is traced within it.
func TestSharedBreakerCallsCarryTheRequestContext(t *testing.T) {
	c := fastConfig()
	c.Retry.MaxAttempts = 2
	store := &ctxStore{memStore: newMemStore()}
	p := newPolicy(t, c, resilience.Options{Name: "labelbox", Store: store})
	ctx := context.WithValue(t.Context(), requestKey{}, "req-1")
	s := &script{errs: []error{errRetry}} // a failure to record, then a success ending the streak
	if _, err := p.Do(ctx, s.attempt); err != nil {
		t.Fatalf("Do = %v", err)
	}
	store.mu.Lock()
	defer store.mu.Unlock()
	if len(store.seen) == 0 {
		t.Fatal("no store calls")
	}
	for i, v := range store.seen {
		if v != "req-1" {
			t.Fatalf("store call %d of %d made for %q, want the request's ctx (%q)", i+1, len(store.seen), v, store.seen)
		}
	}
}

// TestValidateBlamesOnlyTheBadField: an open_timeout of 0 is reported as
// such, and a sync_interval that would be fine with a valid open_timeout is
// not blamed for it.
func TestValidateBlamesOnlyTheBadField(t *testing.T) {
	c := resilience.Defaults()
	c.Breaker.OpenTimeout = 0
	c.Breaker.SyncInterval = time.Second
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), "breaker.open_timeout") {
		t.Fatalf("Validate = %v, want an open_timeout error", err)
	}
	if strings.Contains(err.Error(), "breaker.sync_interval") {
		t.Fatalf("Validate = %v, blames sync_interval for open_timeout's error", err)
	}
}

// TestSharedBreakerGenerationsOnlyGrow: each reset starts a newer
// generation, so a probe admitted before two resets, a trip and a new
// half-open period still does not count in that new period: its failure
// does not re-open the breaker under the new probe.
func TestSharedBreakerGenerationsOnlyGrow(t *testing.T) {
	const open = 50 * time.Millisecond
	c := fastConfig()
	c.Retry.MaxAttempts = 10
	c.Breaker = resilience.Breaker{ConsecutiveFailures: 1, OpenTimeout: open, SyncInterval: open}
	a, b, store := sharedPair(t, c)
	aProbing, aRelease := make(chan struct{}), make(chan struct{})
	bProbing, bRelease := make(chan struct{}), make(chan struct{})
	type result struct {
		after resilience.Attempt // A's attempt after its stale probe
		err   error
	}
	aDone := make(chan result, 1)
	go func() {
		var after resilience.Attempt
		_, err := a.Do(t.Context(), func(_ context.Context, at resilience.Attempt) error {
			switch at.N {
			case 1:
				return errRetry // trips it
			case 2: // the probe that goes stale
				close(aProbing)
				<-aRelease
				return errRetry
			}
			after = at
			return nil
		})
		aDone <- result{after, err}
	}()
	wait := func(ch chan struct{}, what string) {
		t.Helper()
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s never probed", what)
		}
	}
	wait(aProbing, "A")
	for range 2 {
		if _, err := b.Reset(t.Context()); err != nil {
			t.Fatalf("Reset: %v", err)
		}
	}
	bDone := make(chan error, 1)
	go func() {
		_, err := b.Do(t.Context(), func(_ context.Context, at resilience.Attempt) error {
			if at.N == 1 {
				return errRetry // trips it again
			}
			if at.BreakerState == gobreaker.StateHalfOpen {
				close(bProbing)
				<-bRelease
			}
			return nil
		})
		bDone <- err
	}()
	wait(bProbing, "B")
	close(aRelease) // A's stale probe fails while B's probe is out
	var r result
	select {
	case r = <-aDone:
	case <-time.After(10 * time.Second):
		t.Fatal("A never finished")
	}
	close(bRelease)
	if err := <-bDone; err != nil {
		t.Fatalf("B: Do = %v", err)
	}
	if r.err != nil {
		t.Fatalf("A: Do = %v", r.err)
	}
	if r.after.BreakerWait != 0 {
		t.Errorf("A's attempt after its stale probe %+v waited for an open breaker: the stale failure re-opened it", r.after)
	}
	if st := sharedState(t, store); st.State != gobreaker.StateClosed {
		t.Errorf("shared state %v %+v at the end, want closed", st.State, st.Counts)
	}
}

// TestSharedBreakerRecordsIntoALostState: when the store lost the state
// (a flush) between reading and recording, the failure is recorded in the
// fresh state written in its place, not dropped.
func TestSharedBreakerRecordsIntoALostState(t *testing.T) {
	c := fastConfig()
	c.Retry.MaxAttempts = 1
	c.Breaker = resilience.Breaker{ConsecutiveFailures: 3, OpenTimeout: time.Minute, SyncInterval: time.Minute}
	store := newMemStore()
	p := newPolicy(t, c, resilience.Options{Name: "labelbox", Store: store})
	if st := p.State(); st != gobreaker.StateClosed {
		t.Fatalf("State = %q on a new breaker", st)
	}
	store.forget() // this replica still trusts its closed view
	if _, err := p.Do(t.Context(), func(context.Context, resilience.Attempt) error { return errRetry }); !errors.Is(err, resilience.ErrExhausted) {
		t.Fatalf("Do = %v, want the failure", err)
	}
	if st := sharedState(t, store); st.State != gobreaker.StateClosed || st.Counts.ConsecutiveFailures != 1 {
		t.Fatalf("shared state %v %+v, want closed with the failure counted", st.State, st.Counts)
	}
}

// scriptedLimiter is a SharedLimiter answering from a script (then "go").
type scriptedLimiter struct {
	mu      sync.Mutex
	answers []limiterAnswer
	calls   int
}

type limiterAnswer struct {
	wait time.Duration
	err  error
}

func (l *scriptedLimiter) Reserve(ctx context.Context, sink string, perSecond float64, burst int) (time.Duration, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls++
	if len(l.answers) == 0 {
		return 0, nil
	}
	a := l.answers[0]
	l.answers = l.answers[1:]
	return a.wait, a.err
}

// TestSharedRateLimit: with rate_limit.shared the shared bucket decides:
// "go" lets the attempt out, a wait is waited and asked again, a failing
// bucket hands over to this process's own, and a ctx that ends meanwhile
// stops Do with no attempt.
func TestSharedRateLimit(t *testing.T) {
	errBucket := errors.New("bucket unreachable")
	tests := []struct {
		name     string
		answers  []limiterAnswer
		ctxFor   time.Duration // 0: no deadline
		wantErr  error         // nil: the attempt is made
		wantAsks int
		minGap   time.Duration // before the attempt
		warm     int           // Dos before the one checked
	}{
		{"go at once", nil, 0, nil, 1, 0, 0},
		{"wait, then go", []limiterAnswer{{wait: 30 * time.Millisecond}}, 0, nil, 2, 30 * time.Millisecond, 0},
		{"bucket down: the local one applies", []limiterAnswer{{err: errBucket}}, 0, nil, 1, 0, 0},
		{"bucket down: the local one is spent", []limiterAnswer{{err: errBucket}, {err: errBucket}}, 50 * time.Millisecond, context.DeadlineExceeded, 2, 0, 1},
		{"ctx ends during the wait", []limiterAnswer{{wait: time.Hour}}, 50 * time.Millisecond, context.DeadlineExceeded, 1, 0, 0},
		{"ctx ends while the bucket fails", []limiterAnswer{{err: context.DeadlineExceeded}}, -1, context.DeadlineExceeded, 1, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := fastConfig()
			c.RateLimit = resilience.RateLimit{PerSecond: 0.01, Burst: 1, Shared: true}
			lim := &scriptedLimiter{answers: tt.answers}
			p := newPolicy(t, c, resilience.Options{Name: "labelbox", Limiter: lim})
			for range tt.warm {
				if _, err := p.Do(t.Context(), func(context.Context, resilience.Attempt) error { return nil }); err != nil {
					t.Fatalf("first Do = %v", err)
				}
			}
			ctx := t.Context()
			switch {
			case tt.ctxFor > 0:
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.ctxFor)
				defer cancel()
			case tt.ctxFor < 0: // already over
				var cancel context.CancelFunc
				ctx, cancel = context.WithDeadline(ctx, time.Now().Add(-time.Second))
				defer cancel()
			}
			start := time.Now()
			var attemptedAt time.Time
			n, err := p.Do(ctx, func(context.Context, resilience.Attempt) error { attemptedAt = time.Now(); return nil })
			if tt.wantErr != nil {
				if n != 0 || !attemptedAt.IsZero() || !errors.Is(err, tt.wantErr) {
					t.Fatalf("Do = %d, %v (attempted %v); want no attempt and %v", n, err, !attemptedAt.IsZero(), tt.wantErr)
				}
			} else if n != 1 || err != nil {
				t.Fatalf("Do = %d, %v; want one attempt", n, err)
			} else if gap := attemptedAt.Sub(start); gap < tt.minGap {
				t.Fatalf("attempt %v after Do began, want ≥ %v", gap, tt.minGap)
			}
			lim.mu.Lock()
			asks := lim.calls
			lim.mu.Unlock()
			if asks != tt.wantAsks {
				t.Fatalf("shared bucket asked %d times, want %d", asks, tt.wantAsks)
			}
		})
	}
}
