package redis_test

import (
	"bytes"
	"fmt"
	"sort"
	"sync"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/labelpipe/labelpipe/internal/redistest"
	"github.com/labelpipe/labelpipe/pipeline/backend"
	redisb "github.com/labelpipe/labelpipe/pipeline/backend/redis"
)

func deadLetter(i int) *backend.DeadLetter {
	m := message.NewMessage(fmt.Sprintf("uuid-%d", i), []byte(fmt.Sprintf("{\"n\":%d}\x00\xff", i)))
	m.Metadata.Set("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	m.Metadata.Set("export_id", fmt.Sprintf("exp-%d", i))
	return &backend.DeadLetter{
		Sink: "scale", ExportID: fmt.Sprintf("exp-%d", i), Chunk: i,
		Error: "vendor answered 400", Status: 400, Answer: `{"error":"bad project"}`,
		Attempts: 1, TraceID: "0af7651916cd43dd8448eb211c80319c", FailedAt: "2026-01-02T03:04:05Z",
		Message: m,
	}
}

func TestRedisDLQRoundTrip(t *testing.T) {
	srv := redistest.Start(t)
	ctx := t.Context()
	q := redisb.NewDLQ(srv.Client(t), testPrefix)
	var added []*backend.DeadLetter
	for i := range 3 {
		d := deadLetter(i)
		if err := q.Add(ctx, d); err != nil {
			t.Fatal(err)
		}
		if d.ID == "" {
			t.Fatal("Add did not set the id")
		}
		added = append(added, d)
	}
	if n := srv.Client(t).XLen(ctx, testPrefix+"dlq.scale").Val(); n != 3 {
		t.Fatalf("stream %sdlq.scale has %d entries", testPrefix, n)
	}

	for _, tc := range []struct {
		limit int
		want  int
	}{{0, 3}, {2, 2}, {10, 3}} {
		t.Run(fmt.Sprintf("list limit %d", tc.limit), func(t *testing.T) {
			got, err := q.List(ctx, "scale", tc.limit)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != tc.want {
				t.Fatalf("got %d entries, want %d", len(got), tc.want)
			}
			for i, d := range got {
				sameLetter(t, d, added[i]) // oldest first
			}
		})
	}

	took, err := q.Take(ctx, "scale", []string{added[1].ID, "0-1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(took) != 1 {
		t.Fatalf("took %d entries, want 1", len(took))
	}
	sameLetter(t, took[0], added[1])
	if again, _ := q.Take(ctx, "scale", []string{added[1].ID}); len(again) != 0 {
		t.Fatal("an entry was taken twice")
	}
	if n, _ := q.Len(ctx, "scale"); n != 2 {
		t.Fatalf("len %d after take, want 2", n)
	}
	rest, err := q.Take(ctx, "scale", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(rest) != 2 {
		t.Fatalf("take all got %d", len(rest))
	}
	sameLetter(t, rest[0], added[0])
	sameLetter(t, rest[1], added[2])
	if n, _ := q.Len(ctx, "scale"); n != 0 {
		t.Fatalf("len %d after take all", n)
	}
	if n, _ := q.Len(ctx, "never-used"); n != 0 {
		t.Fatalf("len of an unknown sink %d", n)
	}
	if _, err := q.Take(ctx, "scale", []string{"not-an-id"}); err == nil {
		t.Fatal("malformed id accepted")
	}
}

func sameLetter(t *testing.T, got, want *backend.DeadLetter) {
	t.Helper()
	if got.ID != want.ID || got.Sink != want.Sink || got.ExportID != want.ExportID || got.Chunk != want.Chunk ||
		got.Error != want.Error || got.Status != want.Status || got.Answer != want.Answer ||
		got.Attempts != want.Attempts || got.TraceID != want.TraceID || got.FailedAt != want.FailedAt {
		t.Fatalf("dead letter\n got %+v\nwant %+v", got, want)
	}
	if got.Message == nil {
		t.Fatal("message missing")
	}
	if got.Message.UUID != want.Message.UUID || !bytes.Equal(got.Message.Payload, want.Message.Payload) {
		t.Fatalf("message %s %q, want %s %q", got.Message.UUID, got.Message.Payload, want.Message.UUID, want.Message.Payload)
	}
	if fmt.Sprint(got.Message.Metadata) != fmt.Sprint(want.Message.Metadata) {
		t.Fatalf("metadata %v, want %v", got.Message.Metadata, want.Message.Metadata)
	}
}

func TestRedisDLQConcurrentTakesShareNothing(t *testing.T) {
	srv := redistest.Start(t)
	ctx := t.Context()
	q := redisb.NewDLQ(srv.Client(t), testPrefix)
	const n = 1200 // more than one take batch
	for i := range n {
		if err := q.Add(ctx, deadLetter(i)); err != nil {
			t.Fatal(err)
		}
	}
	var (
		mu  sync.Mutex
		ids []string
		wg  sync.WaitGroup
	)
	for range 4 {
		wg.Go(func() {
			took, err := q.Take(ctx, "scale", nil)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			for _, d := range took {
				ids = append(ids, d.ID)
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	sort.Strings(ids)
	for i := 1; i < len(ids); i++ {
		if ids[i] == ids[i-1] {
			t.Fatalf("%s taken twice", ids[i])
		}
	}
	if len(ids) != n {
		t.Fatalf("took %d of %d", len(ids), n)
	}
}

func TestRedisDLQEntryWithoutMessage(t *testing.T) {
	srv := redistest.Start(t)
	q := redisb.NewDLQ(srv.Client(t), testPrefix)
	d := &backend.DeadLetter{Sink: "labelbox", ExportID: "e", Error: "render failed", FailedAt: "2026-01-02T03:04:05Z"}
	if err := q.Add(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	got, err := q.List(t.Context(), "labelbox", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Message != nil || got[0].Error != "render failed" {
		t.Fatalf("got %+v", got)
	}
	if err := q.Add(t.Context(), &backend.DeadLetter{}); err == nil {
		t.Fatal("dead letter without a sink accepted")
	}
}
