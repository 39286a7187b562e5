package pipeline

// Operator controls over a sink's deliveries: pause and resume, and what
// the console shows about each sink's recent deliveries.

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/labelpipe/labelpipe/pipeline/backend"
)

// pauseSync is how stale a replica's view of the shared pauses may be: a
// pause or resume made on another replica takes effect here within it.
const pauseSync = time.Second

// pauses is this process's view of which sinks are paused. With a shared
// store (the broker's backend is a backend.Pauser, as Redis is) it is read
// at most every pauseSync; without one the view is the state.
type pauses struct {
	store backend.PauseStore // nil: this process only
	log   *slog.Logger

	mu      sync.Mutex
	state   map[string]backend.Pause
	readAt  time.Time
	failing bool          // the store errored on the last read; logged once
	changed chan struct{} // closed and replaced when this process pauses or resumes
}

func newPauses(store backend.PauseStore, log *slog.Logger) *pauses {
	return &pauses{store: store, log: log, state: map[string]backend.Pause{}, changed: make(chan struct{})}
}

// get reports whether sink is paused, and by whom. While the shared store
// cannot be read the last view stands.
func (v *pauses) get(ctx context.Context, sink string) (backend.Pause, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.store != nil && time.Since(v.readAt) >= pauseSync {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := v.store.Pauses(ctx)
		cancel()
		v.readAt = time.Now()
		switch {
		case err != nil && !v.failing:
			v.failing = true
			v.log.Warn("shared sink pauses unavailable; going by the last known ones", "err", err)
		case err == nil:
			if v.failing {
				v.log.Info("shared sink pauses available again")
			}
			v.failing = false
			v.state = st
		}
	}
	p, ok := v.state[sink]
	return p, ok
}

// set pauses sink (p non-nil) or resumes it, in the shared store first.
func (v *pauses) set(ctx context.Context, sink string, p *backend.Pause) error {
	if v.store != nil {
		if err := v.store.SetPause(ctx, sink, p); err != nil {
			return err
		}
	}
	v.mu.Lock()
	if p == nil {
		delete(v.state, sink)
	} else {
		v.state[sink] = *p
	}
	close(v.changed)
	v.changed = make(chan struct{})
	v.mu.Unlock()
	return nil
}

func (v *pauses) changedCh() <-chan struct{} {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.changed
}

// pauseGate is a sink's resilience.Options.Gate: before each attempt it
// waits while the sink is paused. The wait spends no retry budget, and the
// request stays on the broker, unacknowledged, so it is neither attempted
// nor dead-lettered; a shutdown ends the wait and hands the request back.
func (p *Pipeline) pauseGate(s *builtSink) func(context.Context) error {
	return func(ctx context.Context) error {
		waited := false
		for {
			ch := p.pauses.changedCh()
			pz, on := p.pauses.get(ctx, s.cfg.Name)
			if !on {
				if waited {
					trace.SpanFromContext(ctx).AddEvent("sink resumed")
				}
				return nil
			}
			if !waited {
				waited = true
				trace.SpanFromContext(ctx).AddEvent("sink paused; waiting", trace.WithAttributes(
					attribute.String("labelpipe.paused_by", pz.By)))
			}
			t := time.NewTimer(pauseSync)
			select {
			case <-ctx.Done():
				t.Stop()
				return fmt.Errorf("sink %s paused: %w", s.cfg.Name, ctx.Err())
			case <-ch:
			case <-t.C:
			}
			t.Stop()
		}
	}
}

// sinkStats is what the console shows about a sink's recent deliveries in
// this process: how many it delivered in the last minute, and the last
// error.
type sinkStats struct {
	mu        sync.Mutex
	count     [60]int64 // deliveries in each second, by unix second mod 60
	second    [60]int64 // the unix second each count is for
	lastErr   string
	lastErrAt time.Time
}

func (st *sinkStats) delivered(now time.Time) {
	sec := now.Unix()
	i := sec % 60
	st.mu.Lock()
	if st.second[i] != sec {
		st.second[i], st.count[i] = sec, 0
	}
	st.count[i]++
	st.mu.Unlock()
}

func (st *sinkStats) failed(err error, now time.Time) {
	st.mu.Lock()
	st.lastErr, st.lastErrAt = err.Error(), now
	st.mu.Unlock()
}

// perMinute is the deliveries of the last 60 seconds.
func (st *sinkStats) perMinute(now time.Time) int64 {
	sec := now.Unix()
	st.mu.Lock()
	defer st.mu.Unlock()
	var n int64
	for i := range st.count {
		if sec-st.second[i] < 60 {
			n += st.count[i]
		}
	}
	return n
}

func (st *sinkStats) last() (string, time.Time) {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.lastErr, st.lastErrAt
}
