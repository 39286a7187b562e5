package resilience

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"
	"golang.org/x/time/rate"
)

// Errors Do's error wraps, next to the last attempt's error, so that the
// caller can tell a dead letter's reason apart with errors.Is.
var (
	// ErrPermanent means the last attempt failed in a way another attempt
	// cannot fix (for example a 400).
	ErrPermanent = errors.New("permanent failure")
	// ErrExhausted means every attempt failed and retry.max_attempts or
	// retry.max_elapsed is spent.
	ErrExhausted = errors.New("retries exhausted")
)

// Options are the policy's collaborators.
type Options struct {
	// Name is the sink name, for logs and the breaker's name.
	Name string
	// Logger receives breaker state changes (unless OnStateChange is set)
	// and shared-store trouble; nil discards them.
	Logger *slog.Logger
	// Store, when set, keeps the breaker state in a shared store
	// (gobreaker's DistributedCircuitBreaker) so that replicas open and
	// close it together. Each replica reads it at most every
	// breaker.sync_interval while all is well and writes only what
	// changes the state (failures, the success ending a failure streak,
	// probes, transitions). The lock is only held for that bookkeeping,
	// never during a request. A failed Store.Lock is retried for up to 5s
	// while the store still answers GetData (the lock is busy), not when
	// the store is down. New makes no store call: the shared state is read
	// (and created when missing) on first use, and while the store is down
	// attempts go ahead on this replica's last view of it.
	Store gobreaker.SharedDataStore
	// OnStateChange, when set, is called on every breaker transition this
	// process makes instead of logging it.
	// It runs while the breaker is locked: it must be quick and must not
	// call State.
	OnStateChange func(from, to gobreaker.State)
	// Gate, when set, is called before each attempt and blocks while the
	// sink must not be tried (an operator paused it). Like an open
	// breaker, the time it blocks spends no retry budget: it counts
	// towards neither retry.max_attempts nor retry.max_elapsed, and is
	// reported in Attempt.BreakerWait. An error (ctx ended) stops Do.
	Gate func(ctx context.Context) error
	// Limiter, when set and rate_limit.shared is, keeps the rate limit's
	// bucket where every replica draws from it (Redis). While it fails,
	// the process's own bucket applies.
	Limiter SharedLimiter
}

// SharedLimiter is a rate limit bucket shared between replicas.
type SharedLimiter interface {
	// Reserve takes a token from sink's bucket of perSecond with burst,
	// or says how long to wait before asking again (0: go now).
	Reserve(ctx context.Context, sink string, perSecond float64, burst int) (time.Duration, error)
}

// Attempt describes one attempt to the function Do runs.
type Attempt struct {
	// N is the 1-based attempt number.
	N int
	// BreakerState is the breaker's state when the attempt was let
	// through: "closed" or "half-open" (a probe).
	BreakerState gobreaker.State
	// Backoff is what Do waited before this attempt (backoff or the
	// vendor's Retry-After).
	Backoff time.Duration
	// RetryAfter says the wait honoured the vendor's Retry-After.
	RetryAfter bool
	// BreakerWait is how long Do waited for an open breaker (or another
	// caller's half-open probe) before this attempt.
	BreakerWait time.Duration
}

// Policy runs one sink's attempts through its rate limit, circuit breaker
// and retry policy. It is safe for concurrent use; one Policy serves every
// in-flight request of a sink.
type Policy struct {
	name     string
	cfg      Config
	log      *slog.Logger
	onChange func(from, to gobreaker.State)
	gate     func(ctx context.Context) error // nil: never held
	limiter  *rate.Limiter                   // nil: unlimited
	shared   SharedLimiter                   // nil: the limiter alone
	br       breaker

	mu sync.Mutex
	// changed is closed (and replaced) whenever the breaker changes state
	// or a half-open probe finishes, to wake callers waiting for it.
	changed chan struct{}
	// openUntil is when the local breaker's open period ends.
	openUntil time.Time
}

// New builds a policy from a validated config.
func New(cfg Config, opts Options) (*Policy, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("resilience: %w", err)
	}
	p := &Policy{
		name:     opts.Name,
		cfg:      cfg,
		log:      opts.Logger,
		onChange: opts.OnStateChange,
		gate:     opts.Gate,
		changed:  make(chan struct{}),
	}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	if cfg.RateLimit.PerSecond > 0 {
		burst := cfg.RateLimit.Burst
		if burst == 0 {
			burst = 1
		}
		p.limiter = rate.NewLimiter(rate.Limit(cfg.RateLimit.PerSecond), burst)
		if cfg.RateLimit.Shared {
			p.shared = opts.Limiter
		}
	}
	settings := p.settings()
	if opts.Store == nil {
		lb := &localBreaker{settings: settings, p: p}
		lb.cb.Store(gobreaker.NewTwoStepCircuitBreaker[struct{}](settings))
		p.br = lb
		return p, nil
	}
	sb := &sharedBreaker{
		store:        opts.Store,
		held:         &heldStore{SharedDataStore: opts.Store},
		settings:     settings,
		key:          "gobreaker:state:" + opts.Name,
		lockKey:      "gobreaker:mutex:" + opts.Name,
		syncEvery:    cfg.Breaker.syncInterval(),
		everyOutcome: cfg.Breaker.FailureRatio > 0,
		p:            p,
		probe:        make(chan struct{}, 1),
	}
	// No store call here: the shared state is read, or created, on first
	// use, so that a store that is down at startup does not stop the
	// daemon (it delivers without the shared state until the store answers).
	p.br = sb
	return p, nil
}

// settings maps the config onto gobreaker's.
func (p *Policy) settings() gobreaker.Settings {
	b := p.cfg.Breaker
	return gobreaker.Settings{
		Name:        p.name,
		MaxRequests: 1,
		Interval:    b.Interval,
		Timeout:     b.OpenTimeout,
		ReadyToTrip: func(c gobreaker.Counts) bool {
			if b.ConsecutiveFailures > 0 && c.ConsecutiveFailures >= b.ConsecutiveFailures {
				return true
			}
			valid := c.Requests - min(c.Requests, c.TotalExclusions)
			return b.FailureRatio > 0 && valid >= b.MinRequests && valid > 0 &&
				float64(c.TotalFailures)/float64(valid) >= b.FailureRatio
		},
		// A permanent failure (a 400) proves the vendor is up.
		IsSuccessful: func(err error) bool { return err == nil || !retryable(err) },
		// Our own cancellation and stale results say nothing about the vendor.
		IsExcluded:    func(err error) bool { return errors.Is(err, errExcluded) },
		OnStateChange: func(_ string, from, to gobreaker.State) { p.stateChanged(from, to) },
	}
}

// stateChanged runs under the breaker's lock: no calls back into it.
func (p *Policy) stateChanged(from, to gobreaker.State) {
	p.mu.Lock()
	if to == gobreaker.StateOpen {
		p.openUntil = time.Now().Add(p.cfg.Breaker.OpenTimeout)
	}
	p.mu.Unlock()
	p.broadcast()
	if p.onChange != nil {
		p.onChange(from, to)
		return // the caller observes transitions, and logs them if it wants
	}
	switch to {
	case gobreaker.StateOpen:
		p.log.Warn("circuit breaker opened: pausing deliveries", "breaker", p.name, "from", from.String(), "open_timeout", p.cfg.Breaker.OpenTimeout)
	case gobreaker.StateHalfOpen:
		p.log.Info("circuit breaker half-open: probing", "breaker", p.name)
	case gobreaker.StateClosed:
		p.log.Info("circuit breaker closed: deliveries resume", "breaker", p.name, "from", from.String())
	}
}

// broadcast wakes every caller waiting on the breaker.
func (p *Policy) broadcast() {
	p.mu.Lock()
	close(p.changed)
	p.changed = make(chan struct{})
	p.mu.Unlock()
}

func (p *Policy) changedCh() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.changed
}

// State is the breaker's state: closed, half-open or open.
func (p *Policy) State() gobreaker.State { return p.br.state(context.Background()) }

// StateContext is State, reading a shared store (when it must) in ctx.
func (p *Policy) StateContext(ctx context.Context) gobreaker.State { return p.br.state(ctx) }

// Do runs attempt until it succeeds, fails permanently, or
// retry.max_attempts / retry.max_elapsed are spent.
//
// Before each attempt it waits for the rate limiter. While the breaker is
// open it waits, making no attempt and spending no budget, until the open
// period has passed and a half-open probe has decided. A probe that fails
// retryably spends no budget either: it counts towards neither
// retry.max_attempts nor retry.max_elapsed, and the request waits for the
// re-opened breaker again, so a long outage cannot dead-letter a request
// through probes alone. Backoff is exponential with full jitter; a larger
// Retry-After (capped at retry.max_interval) replaces it. Cancelling ctx
// stops any wait and returns an error wrapping ctx.Err(); it wraps neither
// ErrPermanent nor ErrExhausted, so the caller can hand the request back
// rather than dead-letter it.
//
// attempts, like Attempt.N and Error.Attempts, counts every attempt made,
// probes included.
func (p *Policy) Do(ctx context.Context, attempt func(ctx context.Context, a Attempt) error) (attempts int, err error) {
	return p.Resume(ctx, Progress{}, nil, attempt)
}

// Progress is how far one request's retries got: every attempt made
// (probes included), those that count towards retry.max_attempts, and the
// time that counts towards retry.max_elapsed. It is what carries a
// request's retry budget across processes.
type Progress struct {
	Attempts, Spent int
	Elapsed         time.Duration
}

// Resume is Do for a request that earlier processes already tried: it
// goes on from prior, so that max_attempts and max_elapsed count every
// process's attempts. Only time spent trying counts: not the time between
// processes, nor time behind an open breaker. save, when set, is called
// with the progress after each failed attempt that will be retried, for
// the caller to keep it.
func (p *Policy) Resume(ctx context.Context, prior Progress, save func(Progress), attempt func(ctx context.Context, a Attempt) error) (attempts int, err error) {
	start := time.Now()
	var (
		free     time.Duration // excluded from max_elapsed: breaker waits, failed probes
		spent    = prior.Spent // attempts that count towards max_attempts
		lastErr  error
		backoff  time.Duration
		honoured bool
		// freeSince, when set, is when an excluded attempt (a failed
		// probe, a pending one) began: everything from then until the
		// next attempt begins is free, its backoff however long the
		// sleep really took.
		freeSince time.Time
	)
	elapsed := func() time.Duration {
		e := prior.Elapsed + time.Since(start) - free
		if !freeSince.IsZero() {
			e -= time.Since(freeSince)
		}
		return e
	}
	for n := prior.Attempts + 1; ; n++ {
		adm, breakerWait, err := p.admit(ctx)
		if !freeSince.IsZero() {
			free += time.Since(freeSince) // the breaker wait included
			freeSince = time.Time{}
		} else {
			free += breakerWait
		}
		if err != nil {
			return n - 1, canceled(err, n-1, lastErr)
		}
		began := time.Now()
		err = attempt(ctx, Attempt{N: n, BreakerState: adm.state, Backoff: backoff, RetryAfter: honoured, BreakerWait: breakerWait})
		outcome := err
		if err != nil && (ctx.Err() != nil || pending(err)) {
			outcome = fmt.Errorf("%w: %w", errExcluded, err)
		}
		adm.done(outcome)
		if err == nil {
			return n, nil
		}
		lastErr = err
		if ctx.Err() != nil {
			return n, canceled(ctx.Err(), n, lastErr)
		}
		if !retryable(err) {
			return n, &Error{Kind: ErrPermanent, Attempts: n, Elapsed: time.Since(start), Last: err}
		}
		if pending(err) {
			// The vendor took the work and is still doing it (an
			// asynchronous import): not a failure. The next attempt
			// follows it after the first interval (or the vendor's
			// Retry-After); it spends neither an attempt of
			// max_attempts nor time of max_elapsed, and the breaker did
			// not count it. The sink bounds how long it follows.
			backoff, honoured = p.backoff(1, err)
			freeSince = began
		} else if adm.state == gobreaker.StateHalfOpen {
			// The failed probe re-opened the breaker: like the open
			// period, it spends nothing. The backoff (not grown by it)
			// still applies, so that a probe whose outcome the store
			// failed to record cannot be repeated at once.
			backoff, honoured = p.backoff(max(spent, 1), err)
			freeSince = began
		} else {
			spent++
			if spent >= p.cfg.Retry.MaxAttempts {
				return n, &Error{Kind: ErrExhausted, Attempts: n, Elapsed: time.Since(start), Last: err}
			}
			backoff, honoured = p.backoff(spent, err)
			if limit := p.cfg.Retry.MaxElapsed; limit > 0 && elapsed()+backoff > limit {
				return n, &Error{Kind: ErrExhausted, Attempts: n, Elapsed: time.Since(start), Last: err, MaxElapsed: limit}
			}
		}
		if save != nil {
			save(Progress{Attempts: n, Spent: spent, Elapsed: elapsed()})
		}
		if err := sleep(ctx, backoff); err != nil {
			return n, canceled(err, n, lastErr)
		}
	}
}

// admit waits for the rate limiter and the breaker and returns the
// breaker's admission, with how long it waited for the breaker.
func (p *Policy) admit(ctx context.Context) (admission, time.Duration, error) {
	var waited time.Duration
	for {
		if p.gate != nil {
			t0 := time.Now()
			err := p.gate(ctx)
			waited += time.Since(t0)
			if err != nil {
				return admission{}, waited, err
			}
		}
		if err := p.waitRate(ctx); err != nil {
			return admission{}, waited, err
		}
		// Take the channel before asking, so that a probe finishing in
		// between still wakes us.
		ch := p.changedCh()
		adm, until, err := p.br.allow(ctx)
		if err == nil {
			return adm, waited, nil
		}
		t0 := time.Now()
		werr := p.waitBreaker(ctx, ch, until)
		waited += time.Since(t0)
		if werr != nil {
			return admission{}, waited, werr
		}
	}
}

// waitBreaker waits until the open period ends (until), or, for a probe in
// flight elsewhere, until the breaker changes, polling in case the change
// happens in another replica.
func (p *Policy) waitBreaker(ctx context.Context, ch <-chan struct{}, until time.Time) error {
	d := time.Until(until) + time.Millisecond // the breaker flips strictly after its expiry
	if until.IsZero() || d <= time.Millisecond {
		d = min(max(p.cfg.Breaker.OpenTimeout/10, 5*time.Millisecond), time.Second)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-ch:
		return nil
	case <-t.C:
		return nil
	}
}

func (p *Policy) waitRate(ctx context.Context) error {
	if p.limiter == nil {
		return nil
	}
	if p.shared != nil {
		for {
			d, err := p.shared.Reserve(ctx, p.name, p.cfg.RateLimit.PerSecond, max(1, p.cfg.RateLimit.Burst))
			if err != nil {
				if ctx.Err() != nil {
					return context.Cause(ctx)
				}
				// The shared bucket is out of reach: this process's own
				// keeps the pace meanwhile.
				p.log.Warn("shared rate limit unavailable; using this replica's own", "error", err)
				break
			}
			if d == 0 {
				return nil
			}
			if err := sleep(ctx, d); err != nil {
				return err
			}
		}
	}
	r := p.limiter.Reserve()
	d := r.Delay()
	if d == 0 {
		return nil
	}
	if err := sleep(ctx, d); err != nil {
		r.Cancel()
		return err
	}
	return nil
}

// backoff is the wait after the n-th failed attempt that spent budget: full jitter over
// min(max_interval, initial·2^(n-1)), replaced by a larger Retry-After.
func (p *Policy) backoff(n int, err error) (time.Duration, bool) {
	r := p.cfg.Retry
	ceil := r.InitialInterval
	for i := 1; i < n && ceil < r.MaxInterval; i++ {
		ceil *= 2
	}
	ceil = min(ceil, r.MaxInterval)
	d := time.Duration(rand.Int64N(int64(ceil) + 1))
	if ra := retryAfter(err); ra > 0 {
		ra = min(ra, r.MaxInterval)
		if ra > d {
			return ra, true
		}
	}
	return d, false
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Error is Do's failure: it wraps Kind (ErrPermanent or ErrExhausted) and
// the last attempt's error.
type Error struct {
	Kind     error
	Attempts int
	Elapsed  time.Duration
	// MaxElapsed is set when retry.max_elapsed ended the retries.
	MaxElapsed time.Duration
	Last       error
}

func (e *Error) Error() string {
	s := "s"
	if e.Attempts == 1 {
		s = ""
	}
	if e.MaxElapsed > 0 {
		return fmt.Sprintf("%v after %d attempt%s (retry.max_elapsed %v reached): %v", e.Kind, e.Attempts, s, e.MaxElapsed, e.Last)
	}
	return fmt.Sprintf("%v after %d attempt%s in %v: %v", e.Kind, e.Attempts, s, e.Elapsed.Round(time.Millisecond), e.Last)
}

func (e *Error) Unwrap() []error { return []error{e.Kind, e.Last} }

// canceledError wraps ctx.Err() and, when there was one, the last
// attempt's error.
type canceledError struct {
	ctxErr   error
	attempts int
	last     error
}

func canceled(ctxErr error, attempts int, last error) error {
	return &canceledError{ctxErr: ctxErr, attempts: attempts, last: last}
}

func (e *canceledError) Error() string {
	if e.last != nil {
		return fmt.Sprintf("delivery stopped after %d attempts: %v (last error: %v)", e.attempts, e.ctxErr, e.last)
	}
	return fmt.Sprintf("delivery stopped after %d attempts: %v", e.attempts, e.ctxErr)
}

func (e *canceledError) Unwrap() []error {
	if e.last != nil {
		return []error{e.ctxErr, e.last}
	}
	return []error{e.ctxErr}
}

// retryable reports whether err says another attempt may succeed; errors
// that do not say are retryable.
func retryable(err error) bool {
	var r interface{ Retryable() bool }
	if errors.As(err, &r) {
		return r.Retryable()
	}
	return true
}

// pending reports whether err says the vendor is still doing the work
// (Pending() true, as pipeline.DeliveryError says for an import that is
// still running), which is neither a failure nor a success.
func pending(err error) bool {
	var p interface{ Pending() bool }
	return errors.As(err, &p) && p.Pending()
}

func retryAfter(err error) time.Duration {
	var r interface{ RetryAfter() time.Duration }
	if errors.As(err, &r) {
		return r.RetryAfter()
	}
	return 0
}

// errExcluded marks outcomes the breaker must not count: the caller's own
// cancellation, or a result from an earlier breaker generation.
var errExcluded = errors.New("excluded from breaker counts")

// admission is the breaker's permission for one attempt.
type admission struct {
	state gobreaker.State
	done  func(outcome error)
}

// breaker is the local or shared circuit breaker behind a Policy.
type breaker interface {
	// allow admits one attempt, or refuses it with gobreaker.ErrOpenState
	// (until is when the open period ends) or ErrTooManyRequests.
	// The store calls it makes for them are made in ctx.
	allow(ctx context.Context) (adm admission, until time.Time, err error)
	state(ctx context.Context) gobreaker.State
	// reset closes the breaker and forgets its counts.
	reset(ctx context.Context) error
}

// localBreaker keeps the state in this process.
type localBreaker struct {
	// cb is replaced whole by a reset; an attempt admitted by the old one
	// reports its outcome there, where it no longer counts.
	cb       atomic.Pointer[gobreaker.TwoStepCircuitBreaker[struct{}]]
	settings gobreaker.Settings
	p        *Policy
}

func (b *localBreaker) allow(context.Context) (admission, time.Time, error) {
	cb := b.cb.Load()
	st := cb.State()
	done, err := cb.Allow()
	if err != nil {
		var until time.Time
		if errors.Is(err, gobreaker.ErrOpenState) {
			b.p.mu.Lock()
			until = b.p.openUntil
			b.p.mu.Unlock()
		}
		return admission{}, until, err
	}
	// The state read before Allow can be stale: a probe that ended in
	// between admitted this caller in closed, or the open period ended
	// and Allow made it the probe. Read after, the state is the one it was
	// admitted in (a probe's half-open lasts until its done), unless
	// others' failures opened the breaker since, after admitting it.
	switch after := cb.State(); {
	case after != gobreaker.StateOpen:
		st = after
	case st == gobreaker.StateOpen: // it flipped to half-open inside Allow
		st = gobreaker.StateHalfOpen
	}
	adm := admission{state: st, done: done}
	if st == gobreaker.StateHalfOpen {
		adm.done = func(outcome error) {
			done(outcome)
			b.p.broadcast() // the probe slot is free again
		}
	}
	return adm, time.Time{}, nil
}

func (b *localBreaker) state(context.Context) gobreaker.State { return b.cb.Load().State() }
