package pipeline

import (
	"context"
	"errors"
	"runtime/metrics"
	"sync"
	"time"
)

// errHeapGrowth is the cause of a jq run stopped by jq.max_memory.
var errHeapGrowth = errors.New("heap grew past jq.max_memory")

// heapGuard stops jq runs under which the heap grows past their bound. A
// time limit cannot stop `[range(1e9)]` before it has allocated most of a
// gigabyte, so while any run is under way one goroutine samples the heap
// every heapSample and cancels every run whose bound it exceeds.
var heapGuard = &guard{runs: map[*guardedRun]struct{}{}}

const heapSample = 5 * time.Millisecond

type guard struct {
	mu       sync.Mutex
	runs     map[*guardedRun]struct{}
	sampling bool
	last     uint64 // the sampler's last reading, while sampling
}

type guardedRun struct {
	limit  uint64 // heap bytes at which the run is stopped
	cancel context.CancelCauseFunc
}

// watch registers a run allowed to grow the heap by max from now and
// returns the function that unregisters it.
func (g *guard) watch(max uint64, cancel context.CancelCauseFunc) func() {
	r := &guardedRun{cancel: cancel}
	g.mu.Lock()
	if !g.sampling {
		// Under load the sampler runs already, and its reading (at most
		// heapSample old) spares a read of the runtime's statistics.
		g.last = heapBytes()
		g.sampling = true
		go g.sample()
	}
	r.limit = g.last + max
	g.runs[r] = struct{}{}
	g.mu.Unlock()
	return func() {
		g.mu.Lock()
		delete(g.runs, r)
		g.mu.Unlock()
	}
}

// sample runs while any run is registered.
func (g *guard) sample() {
	t := time.NewTicker(heapSample)
	defer t.Stop()
	for range t.C {
		heap := heapBytes()
		g.mu.Lock()
		g.last = heap
		if len(g.runs) == 0 {
			g.sampling = false
			g.mu.Unlock()
			return
		}
		for r := range g.runs {
			if heap > r.limit {
				r.cancel(errHeapGrowth)
				delete(g.runs, r)
			}
		}
		g.mu.Unlock()
	}
}

// heapBytes is the heap occupied by objects, live or not yet swept: what
// a runaway program grows between two garbage collections.
func heapBytes() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}
