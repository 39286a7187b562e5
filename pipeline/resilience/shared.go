package resilience

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"
	"golang.org/x/sync/singleflight"
)

// sharedBreaker keeps the state in a shared store so that replicas agree.
//
// gobreaker's DistributedCircuitBreaker holds the store's lock for the
// whole of Execute; wrapping a vendor request in it would serialise every
// request of the sink across all replicas. So the attempt runs outside:
// admission looks at the shared state, and the outcome is recorded
// afterwards through a short Execute. Each replica sends at most one
// half-open probe.
//
// Reading and locking the store around every attempt made it the
// bottleneck of delivery, so each replica keeps a view of the shared
// state and goes to the store only when something may have changed:
//   - closed with no failure streak: the view is trusted for
//     breaker.sync_interval, and a success changes nothing that matters, so
//     it is not written (unless failure_ratio needs every outcome);
//   - open: the view is trusted until the open period ends;
//   - a failure streak, a half-open breaker and an expired open period are
//     read afresh before every admission;
//   - every outcome that counts is recorded through gobreaker under the
//     store's lock, and what it wrote becomes the view.
//
// So a trip anywhere stops this replica's attempts within sync_interval,
// and failures, streak resets and probes are shared as before.
type sharedBreaker struct {
	store    gobreaker.SharedDataStore
	held     *heldStore // the store as dcb sees it
	settings gobreaker.Settings
	key      string // the state's key, as gobreaker names it
	lockKey  string // the lock's key, as gobreaker names it
	// syncEvery is how long a quiet closed view is trusted.
	syncEvery time.Duration
	// everyOutcome is set when successes count towards tripping
	// (failure_ratio), so each one must be written.
	everyOutcome bool
	p            *Policy
	probe        chan struct{} // this replica's half-open probe slot
	// failing is set while the store errors, so that the outage is
	// logged once rather than per request.
	failing atomic.Bool

	// rec serialises this process's use of dcb and of the store's lock.
	rec sync.Mutex
	dcb *gobreaker.DistributedCircuitBreaker[struct{}] // guarded by rec; nil until first used

	vmu    sync.Mutex
	view   gobreaker.SharedState
	viewAt time.Time // when view was current; zero: no view yet
	// reads lets callers that arrive while a store read is under way share
	// its result, so that a burst of admissions costs one read.
	reads singleflight.Group
}

// lockTimeout is how long recording waits for another holder of the
// store's lock, like gobreaker's own lock.
const lockTimeout = 5 * time.Second

// heldStore is the store as the DistributedCircuitBreaker sees it. The
// sharedBreaker takes the store's lock itself before calling into it, so
// that the state gobreaker reads first (outside its own lock) is read under
// ours; gobreaker's Lock and Unlock are no-ops. It keeps the last state
// read and written, for the caller. Used only under sharedBreaker.rec.
type heldStore struct {
	gobreaker.SharedDataStore
	read, written []byte
}

func (s *heldStore) Lock(string) error   { return nil }
func (s *heldStore) Unlock(string) error { return nil }

func (s *heldStore) GetData(name string) ([]byte, error) {
	data, err := s.SharedDataStore.GetData(name)
	if err == nil {
		s.read = data
	}
	return data, err
}

func (s *heldStore) SetData(name string, data []byte) error {
	err := s.SharedDataStore.SetData(name, data)
	if err == nil {
		s.written = data
	}
	return err
}

// init (re)creates the breaker, which writes a fresh closed state to the
// store when it holds none (first start, or the key was lost). The caller
// holds rec and the store's lock.
func (b *sharedBreaker) init() error {
	dcb, err := gobreaker.NewDistributedCircuitBreaker[struct{}](b.held, b.settings)
	if err != nil {
		return err
	}
	b.dcb = dcb
	return nil
}

// ContextStore is a Store whose calls can carry the caller's context, so
// that the shared breaker's bookkeeping for a delivery (its store reads,
// lock and writes) is traced inside that delivery's trace rather than as
// traces of their own. Options.Store may implement it.
type ContextStore interface {
	gobreaker.SharedDataStore
	// WithContext returns the store making its calls with ctx's values
	// (its deadline and cancellation are the store's business).
	WithContext(ctx context.Context) gobreaker.SharedDataStore
}

// storeFor is the store making its calls in ctx, when it can.
func (b *sharedBreaker) storeFor(ctx context.Context) gobreaker.SharedDataStore {
	if cs, ok := b.store.(ContextStore); ok && ctx != nil {
		return cs.WithContext(ctx)
	}
	return b.store
}

// locked runs fn holding rec and the store's lock.
func (b *sharedBreaker) locked(ctx context.Context, fn func() error) error {
	b.rec.Lock()
	defer b.rec.Unlock()
	return b.withStoreLock(ctx, fn)
}

// withStoreLock runs fn holding the store's lock, then adopts what fn
// wrote (or else read) as the view. The caller holds rec. The store calls,
// fn's through held included, are made in ctx.
func (b *sharedBreaker) withStoreLock(ctx context.Context, fn func() error) error {
	st := b.storeFor(ctx)
	b.held.SharedDataStore = st
	defer func() { b.held.SharedDataStore = b.store }()
	if err := b.lock(st); err != nil {
		return err
	}
	b.held.read, b.held.written = nil, nil
	err := fn()
	last := b.held.written
	if last == nil {
		last = b.held.read
	}
	if s, derr := decode(last); derr == nil {
		b.adopt(s, time.Now()) // stamped after the write: later reads see it
	}
	if uerr := st.Unlock(b.lockKey); uerr != nil && err == nil {
		err = uerr
	}
	return err
}

// lock takes the store's lock, waiting for another holder but not for a
// store that is down.
func (b *sharedBreaker) lock(st gobreaker.SharedDataStore) error {
	deadline := time.Now().Add(lockTimeout)
	for wait := 5 * time.Millisecond; ; wait = min(2*wait, 100*time.Millisecond) {
		err := st.Lock(b.lockKey)
		if err == nil {
			return nil
		}
		if _, gerr := st.GetData(b.key); gerr != nil {
			return err // the store is down, not busy
		}
		if time.Now().Add(wait).After(deadline) {
			return err
		}
		time.Sleep(wait)
	}
}

// run calls fn with the breaker, creating it on first use and recreating
// the shared state first if the store lost it. The caller holds rec and the
// store's lock.
func (b *sharedBreaker) run(fn func(*gobreaker.DistributedCircuitBreaker[struct{}]) error) error {
	if b.dcb == nil {
		if err := b.init(); err != nil {
			return err
		}
	}
	err := fn(b.dcb)
	if errors.Is(err, gobreaker.ErrNoSharedState) {
		if err = b.init(); err == nil {
			err = fn(b.dcb)
		}
	}
	return err
}

func decode(data []byte) (gobreaker.SharedState, error) {
	var s gobreaker.SharedState
	if len(data) == 0 {
		return s, gobreaker.ErrNoSharedState
	}
	err := json.Unmarshal(data, &s)
	return s, err
}

// adopt makes s the view unless a newer one is already known, and wakes
// waiters when the state moved on. It returns the view.
func (b *sharedBreaker) adopt(s gobreaker.SharedState, at time.Time) gobreaker.SharedState {
	b.vmu.Lock()
	if !b.viewAt.IsZero() && at.Before(b.viewAt) {
		s = b.view
		b.vmu.Unlock()
		return s
	}
	moved := !b.viewAt.IsZero() && (s.State != b.view.State || s.Generation != b.view.Generation)
	b.view, b.viewAt = s, at
	b.vmu.Unlock()
	if moved {
		b.p.broadcast()
	}
	return s
}

// trusted returns the view when it may stand in for the store now.
func (b *sharedBreaker) trusted(now time.Time) (gobreaker.SharedState, bool) {
	b.vmu.Lock()
	defer b.vmu.Unlock()
	s, age := b.view, now.Sub(b.viewAt)
	switch {
	case b.viewAt.IsZero():
		return s, false
	case s.State == gobreaker.StateOpen:
		return s, now.Before(s.Expiry)
	case s.State == gobreaker.StateClosed:
		return s, s.Counts.ConsecutiveFailures == 0 && age < b.syncEvery
	default: // half-open: our own probe's end is broadcast; else read before probing
		return s, len(b.probe) > 0 && age < b.syncEvery
	}
}

// current returns the view, read afresh unless it may be trusted.
func (b *sharedBreaker) current(ctx context.Context) (gobreaker.SharedState, error) {
	if s, ok := b.trusted(time.Now()); ok {
		return s, nil
	}
	return b.refresh(ctx)
}

// refresh reads the shared state into the view, once for all callers
// arriving while the read is under way (in the first one's ctx).
func (b *sharedBreaker) refresh(ctx context.Context) (gobreaker.SharedState, error) {
	v, err, _ := b.reads.Do("", func() (any, error) {
		at := time.Now()
		data, err := b.storeFor(ctx).GetData(b.key)
		if err != nil {
			return gobreaker.SharedState{}, err
		}
		b.storeOK()
		s, err := decode(data)
		switch {
		case err == nil:
			return b.adopt(s, at), nil
		case errors.Is(err, gobreaker.ErrNoSharedState):
			// Lost (a Redis flush or failover): write a fresh closed state.
			err = b.locked(ctx, b.init)
			return b.viewCopy(), err
		}
		return gobreaker.SharedState{}, err
	})
	return v.(gobreaker.SharedState), err
}

func (b *sharedBreaker) viewCopy() gobreaker.SharedState {
	b.vmu.Lock()
	defer b.vmu.Unlock()
	return b.view
}

// expire lets gobreaker move an open state past its expiry to half-open,
// under the store's lock, and returns the state then.
func (b *sharedBreaker) expire(ctx context.Context) (gobreaker.SharedState, error) {
	b.rec.Lock()
	defer b.rec.Unlock()
	// Waiters wake together at the expiry; the first one moves it.
	if s := b.viewCopy(); s.State != gobreaker.StateOpen || time.Now().Before(s.Expiry) {
		return s, nil
	}
	err := b.withStoreLock(ctx, func() error {
		return b.run(func(dcb *gobreaker.DistributedCircuitBreaker[struct{}]) error {
			_, err := dcb.State()
			return err
		})
	})
	return b.viewCopy(), err
}

// storeFailed lets the attempt through: a store outage must not stop
// deliveries.
func (b *sharedBreaker) storeFailed(err error) (admission, time.Time, error) {
	if !b.failing.Swap(true) {
		b.p.log.Warn("shared breaker state unavailable: delivering without it", "breaker", b.p.name, "err", err)
	}
	return admission{state: gobreaker.StateClosed, done: func(error) {}}, time.Time{}, nil
}

func (b *sharedBreaker) storeOK() {
	if b.failing.Swap(false) {
		b.p.log.Info("shared breaker state available again", "breaker", b.p.name)
	}
}

func (b *sharedBreaker) allow(ctx context.Context) (admission, time.Time, error) {
	s, err := b.current(ctx)
	if err == nil && s.State == gobreaker.StateOpen && !time.Now().Before(s.Expiry) {
		s, err = b.expire(ctx) // current read it afresh: it is still open
	}
	if err != nil {
		return b.storeFailed(err)
	}
	switch s.State {
	case gobreaker.StateOpen:
		return admission{}, s.Expiry, gobreaker.ErrOpenState
	case gobreaker.StateHalfOpen:
		select {
		case b.probe <- struct{}{}:
		default:
			// Our probe is out: its end wakes us; meanwhile poll in case
			// another replica's probe settles it first.
			return admission{}, time.Now().Add(b.syncEvery), gobreaker.ErrTooManyRequests
		}
		record := b.recorder(ctx, gobreaker.StateHalfOpen, s.Generation)
		return admission{state: gobreaker.StateHalfOpen, done: func(outcome error) {
			record(outcome)
			<-b.probe
			b.p.broadcast()
		}}, time.Time{}, nil
	default:
		return admission{state: gobreaker.StateClosed, done: b.recorder(ctx, gobreaker.StateClosed, s.Generation)}, time.Time{}, nil
	}
}

// recorder returns a func that counts an attempt's outcome in the shared
// state, unless it changes nothing or the breaker has moved on since the
// attempt was admitted in state adm, generation gen.
func (b *sharedBreaker) recorder(ctx context.Context, adm gobreaker.State, gen uint64) func(error) {
	return func(outcome error) {
		if outcome != nil && errors.Is(outcome, errExcluded) {
			return
		}
		// A success on a closed breaker with no failure streak leaves the
		// state as it is: nothing to write.
		noop := adm == gobreaker.StateClosed && !b.everyOutcome && b.settings.IsSuccessful(outcome)
		quiet := func(s gobreaker.SharedState) bool {
			return s.State == gobreaker.StateClosed && s.Counts.ConsecutiveFailures == 0
		}
		if noop {
			if s, err := b.current(ctx); err == nil && quiet(s) {
				return
			}
		}
		b.rec.Lock()
		defer b.rec.Unlock()
		// Again now that ours are serialised: the outcome recorded just
		// before may have ended the streak, or opened the breaker, which
		// makes this one moot.
		if s, ok := b.trusted(time.Now()); ok && (moved(s, adm, gen) || (noop && quiet(s))) {
			return
		}
		ran := false
		err := b.withStoreLock(ctx, func() error {
			return b.run(func(dcb *gobreaker.DistributedCircuitBreaker[struct{}]) error {
				_, err := dcb.Execute(func() (struct{}, error) {
					// Runs under the store's lock, on the state just read.
					ran = true
					if cur, err := decode(b.held.read); err == nil && moved(cur, adm, gen) {
						return struct{}{}, errExcluded
					}
					return struct{}{}, outcome
				})
				return err
			})
		})
		breakerRefused := errors.Is(err, gobreaker.ErrOpenState) || errors.Is(err, gobreaker.ErrTooManyRequests)
		if err != nil && !breakerRefused && (!ran || (!errors.Is(err, errExcluded) && (outcome == nil || !errors.Is(err, outcome)))) {
			if !b.failing.Swap(true) {
				b.p.log.Warn("shared breaker state unavailable: outcome not recorded", "breaker", b.p.name, "err", err)
			}
			return
		}
		b.storeOK()
	}
}

// moved reports whether an outcome admitted in state adm, generation gen
// no longer belongs to the breaker's current state cur. A closed breaker's
// outcome still counts after the counts were reset (a new interval), but
// never in another state; a probe's only in its own half-open generation.
func moved(cur gobreaker.SharedState, adm gobreaker.State, gen uint64) bool {
	if cur.State != adm {
		return true
	}
	return adm == gobreaker.StateHalfOpen && cur.Generation != gen
}

func (b *sharedBreaker) state(ctx context.Context) gobreaker.State {
	s, err := b.current(ctx)
	if err != nil {
		s = b.viewCopy()
	}
	if s.State == gobreaker.StateOpen && !time.Now().Before(s.Expiry) {
		return gobreaker.StateHalfOpen
	}
	return s.State
}
