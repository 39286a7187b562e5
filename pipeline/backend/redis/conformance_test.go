package redis_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/internal/redistest"
	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/pipeline/backend"
	"github.com/labelpipe/labelpipe/pipeline/backend/backendtest"
	redisb "github.com/labelpipe/labelpipe/pipeline/backend/redis"
)

// conformanceClaimIdle is how long a message delivered to a consumer that
// is gone (its backend closed) waits before another claims it: the suite's
// reopened backend gets the in-flight message back after it. Live
// consumers keep their messages however long the suite holds them.
// A nacked message comes back after the broker's own resend sleep
// (250ms), whatever claim_idle is.
const conformanceClaimIdle = time.Second

func TestConformance(t *testing.T) {
	// storage is where a backend lives: its own redis-server and prefix.
	type storage struct {
		srv    *redistest.Server
		prefix string
	}
	var (
		mu       sync.Mutex
		stores   = map[backend.Backend]storage{}
		replicas int
	)
	open := func(t *testing.T, st storage) backend.Backend {
		mu.Lock()
		replicas++
		replica := fmt.Sprintf("replica-%d", replicas)
		mu.Unlock()
		b := redisb.New(st.srv.Client(t), true, redisb.Config{
			Broker:    pipeline.BrokerConfig{Prefix: st.prefix + "stream:", ClaimIdle: conformanceClaimIdle},
			KeyPrefix: st.prefix,
			ReplicaID: replica, // every backend is another replica
		})
		t.Cleanup(func() { _ = b.Close() })
		mu.Lock()
		stores[b] = st
		mu.Unlock()
		return b
	}
	newBackend := func(t *testing.T) backend.Backend {
		mu.Lock()
		prefix := fmt.Sprintf("conformance%d:", len(stores))
		mu.Unlock()
		return open(t, storage{srv: redistest.Start(t), prefix: prefix})
	}
	reopen := func(t *testing.T, b backend.Backend) backend.Backend {
		mu.Lock()
		st, ok := stores[b]
		mu.Unlock()
		if !ok {
			t.Fatal("reopen: backend not opened by this test")
		}
		return open(t, st)
	}
	backendtest.Run(t, backendtest.Features{
		Durable:               true,
		SharedAcrossInstances: true,
		PerGroupQueueStats:    true,
		BreakerStore:          true,
		SettleTime:            600 * time.Millisecond, // > the 250ms nack resend sleep, twice
	}, newBackend, reopen)
}
