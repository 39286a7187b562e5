package redis_test

import (
	"os"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/labelpipe/labelpipe/internal/redistest"
	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/pipeline/backend"
	redisb "github.com/labelpipe/labelpipe/pipeline/backend/redis"
)

// BenchmarkFanoutPublish is what one export's fan-out sends to Redis for
// three sinks of one request each, with the history (its entry rides in
// the first publish) and without: the daemon's side of the history's
// cost, on the client the daemon uses (tracing and metrics hooks included,
// with no-op providers). Run:
//
//	go test -run '^$' -bench FanoutPublish -benchmem -count 6 ./pipeline/backend/redis/
func BenchmarkFanoutPublish(b *testing.B) {
	body, err := os.ReadFile("../../../configs/payloads/issue-10-elements.json")
	if err != nil {
		b.Fatal(err)
	}
	srv := redistest.Start(b)
	c, err := redisb.NewClient(b.Context(), pipeline.RedisConfig{URL: srv.URL()}, nil, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Close() })
	br, err := redisb.NewBroker(c, pipeline.BrokerConfig{Prefix: testPrefix}, "bench", watermill.NopLogger{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = br.Close() })
	h := redisb.NewHistory(c, testPrefix, 10000, time.Hour)
	sinks := []string{"labelbox", "scale", "label_studio"}
	rendered := body[:2048] // a sink's request: a part of the export's size
	for _, history := range []bool{false, true} {
		name := "history=off"
		if history {
			name = "history=on"
		}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				id := watermill.NewUUID()
				e := &backend.ExportEntry{ID: id, ReceivedAt: time.Now(), Event: "issue-exported", Project: "bench", IssueID: id,
					Payload: body, Requests: map[string]backend.RequestState{}, QueuedAt: map[int]time.Time{0: time.Now()}}
				for _, s := range sinks {
					e.Requests[backend.HistoryKey(s, 0)] = backend.RequestState{Sink: s, Chunk: 0, Chunks: 1, State: backend.StateQueued,
						IdempotencyKey: id + "-" + s}
				}
				for i, s := range sinks {
					m := message.NewMessage(id+s, rendered)
					m.Metadata.Set(backend.MetaExportID, id)
					m.Metadata.Set(backend.MetaSink, s)
					if history && i == 0 {
						if ok, histErr, err := br.PublishWithEntry(h, e, "sink."+s, m); !ok || histErr != nil || err != nil {
							b.Fatalf("PublishWithEntry: %v %v %v", ok, histErr, err)
						}
						continue
					}
					if err := br.Publish("sink."+s, m); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
