package redis_test

import (
	"fmt"
	"testing"

	"github.com/labelpipe/labelpipe/internal/redistest"
	"github.com/labelpipe/labelpipe/pipeline/backend"
	redisb "github.com/labelpipe/labelpipe/pipeline/backend/redis"
)

// Take of everything removes a DLQ larger than one take round trip (500
// entries) in full and in order, not just its first batch; a list limit
// of 0 or less means all entries.
func TestRedisDLQTakeAllSpansBatches(t *testing.T) {
	srv := redistest.Start(t)
	ctx := t.Context()
	q := redisb.NewDLQ(srv.Client(t), testPrefix)
	for _, n := range []int{0, 1, 500, 501, 1234} {
		t.Run(fmt.Sprintf("%d entries", n), func(t *testing.T) {
			sink := fmt.Sprintf("sink%d", n)
			var ids []string
			for i := range n {
				d := &backend.DeadLetter{Sink: sink, ExportID: fmt.Sprintf("exp-%d", i), Chunk: i}
				if err := q.Add(ctx, d); err != nil {
					t.Fatal(err)
				}
				ids = append(ids, d.ID)
			}
			for _, limit := range []int{0, -1} {
				if got, err := q.List(ctx, sink, limit); err != nil || len(got) != n {
					t.Fatalf("List(limit %d) = %d entries, %v; want all %d", limit, len(got), err, n)
				}
			}
			took, err := q.Take(ctx, sink, nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(took) != n {
				t.Fatalf("Take(all) returned %d entries, want %d", len(took), n)
			}
			for i, d := range took {
				if d.ID != ids[i] || d.Chunk != i {
					t.Fatalf("entry %d taken is %s (chunk %d), want %s (chunk %d)", i, d.ID, d.Chunk, ids[i], i)
				}
			}
			if left, err := q.Len(ctx, sink); err != nil || left != 0 {
				t.Fatalf("after Take(all) Len = %d, %v; want 0", left, err)
			}
		})
	}
}
