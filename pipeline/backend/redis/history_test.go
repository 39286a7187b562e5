package redis_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/internal/redistest"
	"github.com/labelpipe/labelpipe/pipeline/backend"
	redisb "github.com/labelpipe/labelpipe/pipeline/backend/redis"
)

// What the history keeps in Redis is bounded, not only what it shows: the
// index, the hashes and the bodies of trimmed exports go, within one trim
// batch (max/64) of max_exports; every key expires.
func TestRedisHistoryStorageIsBounded(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := t.Context()
	const maxExports = 128 // trim batch 2
	h := redisb.NewHistory(rdb, "hb:", maxExports, time.Hour)
	for i := range 3 * maxExports {
		e := &backend.ExportEntry{ID: fmt.Sprintf("e%04d", i), ReceivedAt: time.Now(), Event: "issue-exported", Payload: []byte(`{"x":1}`),
			Requests: map[string]backend.RequestState{backend.HistoryKey("s", 0): {Sink: "s", State: backend.StateQueued}}}
		if err := h.Add(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	n, err := rdb.ZCard(ctx, "hb:history").Result()
	if err != nil || n > maxExports+2 || n < maxExports {
		t.Errorf("index holds %d ids (%v), want %d to %d", n, err, maxExports, maxExports+2)
	}
	hashes, _ := rdb.Keys(ctx, "hb:history:e*").Result()
	var bodies, plain int
	for _, k := range hashes {
		if len(k) > 5 && k[len(k)-5:] == ":body" {
			bodies++
		} else {
			plain++
		}
		if ttl, err := rdb.PTTL(ctx, k).Result(); err != nil || ttl <= 0 || ttl > time.Hour {
			t.Errorf("%s expires in %v (%v), want within the hour", k, ttl, err)
		}
	}
	if int64(plain) != n || int64(bodies) != n {
		t.Errorf("%d hashes and %d bodies for %d indexed exports, want as many of each", plain, bodies, n)
	}
	if ex, _ := rdb.Exists(ctx, "hb:history:e0000", "hb:history:e0000:body").Result(); ex != 0 {
		t.Errorf("the oldest export's hash or body is still kept")
	}
}
