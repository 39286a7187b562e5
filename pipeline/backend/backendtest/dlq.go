package backendtest

import (
	"bytes"
	"fmt"
	"maps"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/labelpipe/labelpipe/pipeline/backend"
)

// TestDLQ checks the DLQ contract on a fresh backend per subtest.
//
//   - AddListTake: Add sets an id, distinct within the sink; Len counts per
//     sink; List is oldest first, honours its limit (all when ≤ 0) and
//     never mixes sinks; Take(ids) removes and returns exactly those,
//     ignoring ids it does not hold (one taken before included); Take with
//     no ids removes and returns every entry of the sink, no other.
//   - RoundTrip: every field of a DeadLetter (Chunk -1 included) and its
//     Message's UUID, payload and metadata come back from List and Take as
//     added; an entry without a Message comes back without one.
//   - ConcurrentAdd: 20 concurrent Adds get 20 distinct ids, all listed.
//   - SharedAcrossInstances: an entry added through one backend is listed
//     and taken through another on the same storage.
func TestDLQ(t *testing.T, f Features, newBackend Constructor, reopen Reopener) {
	checkSetup(t, f, newBackend, reopen)
	t.Run("AddListTake", func(t *testing.T) { testDLQAddListTake(t, newBackend) })
	t.Run("RoundTrip", func(t *testing.T) { testDLQRoundTrip(t, newBackend) })
	t.Run("ConcurrentAdd", func(t *testing.T) { testDLQConcurrentAdd(t, newBackend) })
	if f.SharedAcrossInstances {
		t.Run("SharedAcrossInstances", func(t *testing.T) { testDLQShared(t, f, newBackend, reopen) })
	}
}

// deadLetter is a distinct, fully set dead letter of sink; i varies every
// field.
func deadLetter(sink string, i int) *backend.DeadLetter {
	m := message.NewMessage(fmt.Sprintf("uuid-%s-%d", sink, i), []byte(fmt.Sprintf("{\"n\":%d}\x00\xff", i)))
	m.Metadata.Set("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	m.Metadata.Set(backend.MetaExportID, fmt.Sprintf("exp-%d", i))
	m.Metadata.Set(backend.MetaChunk, fmt.Sprint(i))
	return &backend.DeadLetter{
		Sink:     sink,
		ExportID: fmt.Sprintf("exp-%d", i),
		Chunk:    i,
		Error:    fmt.Sprintf("vendor answered 4%02d", i),
		Status:   400 + i,
		Answer:   fmt.Sprintf(`{"error":"bad project %d"}`, i),
		Attempts: i + 1,
		TraceID:  fmt.Sprintf("0af7651916cd43dd8448eb211c8031%02d", i),
		FailedAt: time.Date(2026, 1, 2, 3, 4, 5, 123456789+i, time.UTC).Format(time.RFC3339Nano),
		Message:  m,
	}
}

func openDLQ(t *testing.T, b backend.Backend) backend.DLQ {
	t.Helper()
	q := b.DLQ()
	if q == nil {
		t.Fatal("DLQ() is nil")
	}
	return q
}

func add(t *testing.T, q backend.DLQ, ds ...*backend.DeadLetter) {
	t.Helper()
	for _, d := range ds {
		if err := q.Add(t.Context(), d); err != nil {
			t.Fatalf("Add %s/%s: %v", d.Sink, d.ExportID, err)
		}
		if d.ID == "" {
			t.Fatalf("Add %s/%s set no id", d.Sink, d.ExportID)
		}
	}
}

// sameLetter fails unless got is want, field by field, its message
// included.
func sameLetter(t *testing.T, got, want *backend.DeadLetter) {
	t.Helper()
	g, w := *got, *want
	g.Message, w.Message = nil, nil
	if g != w {
		t.Fatalf("dead letter\n got %+v\nwant %+v", g, w)
	}
	switch {
	case want.Message == nil && got.Message != nil:
		t.Fatalf("dead letter %s: message %s, want none", want.ID, got.Message.UUID)
	case want.Message == nil:
	case got.Message == nil:
		t.Fatalf("dead letter %s: message missing", want.ID)
	case got.Message.UUID != want.Message.UUID || !bytes.Equal(got.Message.Payload, want.Message.Payload):
		t.Fatalf("dead letter %s: message %s %q, want %s %q", want.ID,
			got.Message.UUID, got.Message.Payload, want.Message.UUID, want.Message.Payload)
	case !maps.Equal(got.Message.Metadata, want.Message.Metadata):
		t.Fatalf("dead letter %s: metadata %v, want %v", want.ID, got.Message.Metadata, want.Message.Metadata)
	}
}

// sameLetters fails unless got is want, in order.
func sameLetters(t *testing.T, what string, got, want []*backend.DeadLetter) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d entries %v, want %d %v", what, len(got), ids(got), len(want), ids(want))
	}
	for i := range got {
		if got[i] == nil {
			t.Fatalf("%s: entry %d is nil", what, i)
		}
		if got[i].ID != want[i].ID {
			t.Fatalf("%s: ids %v, want %v (oldest first)", what, ids(got), ids(want))
		}
		sameLetter(t, got[i], want[i])
	}
}

// sameSet fails unless got holds want's entries, in any order.
func sameSet(t *testing.T, what string, got, want []*backend.DeadLetter) {
	t.Helper()
	byID := map[string]*backend.DeadLetter{}
	for _, d := range got {
		if d == nil {
			t.Fatalf("%s: a nil entry", what)
		}
		byID[d.ID] = d
	}
	var inOrder []*backend.DeadLetter
	for _, w := range want {
		if d, ok := byID[w.ID]; ok {
			inOrder = append(inOrder, d)
		}
	}
	if len(inOrder) != len(want) || len(got) != len(want) {
		t.Fatalf("%s: ids %v, want %v in any order", what, ids(got), ids(want))
	}
	sameLetters(t, what, inOrder, want)
}

func ids(ds []*backend.DeadLetter) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		if d != nil {
			out[i] = d.ID
		}
	}
	return out
}

func wantLen(t *testing.T, q backend.DLQ, sink string, want int64) {
	t.Helper()
	n, err := q.Len(t.Context(), sink)
	if err != nil {
		t.Fatalf("Len(%s): %v", sink, err)
	}
	if n != want {
		t.Fatalf("Len(%s) = %d, want %d", sink, n, want)
	}
}

func list(t *testing.T, q backend.DLQ, sink string, limit int) []*backend.DeadLetter {
	t.Helper()
	got, err := q.List(t.Context(), sink, limit)
	if err != nil {
		t.Fatalf("List(%s, %d): %v", sink, limit, err)
	}
	return got
}

func take(t *testing.T, q backend.DLQ, sink string, ids []string) []*backend.DeadLetter {
	t.Helper()
	got, err := q.Take(t.Context(), sink, ids)
	if err != nil {
		t.Fatalf("Take(%s, %v): %v", sink, ids, err)
	}
	return got
}

func testDLQAddListTake(t *testing.T, newBackend Constructor) {
	q := openDLQ(t, newBackend(t))
	wantLen(t, q, "scale", 0)
	if got := list(t, q, "scale", 0); len(got) != 0 {
		t.Fatalf("List of an empty DLQ: %v", ids(got))
	}
	if got := take(t, q, "scale", nil); len(got) != 0 {
		t.Fatalf("Take of an empty DLQ: %v", ids(got))
	}

	a1, b1, a2, a3, b2 := deadLetter("scale", 1), deadLetter("labelbox", 1), deadLetter("scale", 2), deadLetter("scale", 3), deadLetter("labelbox", 2)
	add(t, q, a1, b1, a2, a3, b2)
	for _, same := range [][]*backend.DeadLetter{{a1, a2, a3}, {b1, b2}} {
		seen := map[string]bool{}
		for _, d := range same {
			if seen[d.ID] {
				t.Fatalf("Add gave id %s twice in sink %s", d.ID, d.Sink)
			}
			seen[d.ID] = true
		}
	}
	wantLen(t, q, "scale", 3)
	wantLen(t, q, "labelbox", 2)
	wantLen(t, q, "never-used", 0)

	for _, tc := range []struct {
		limit int
		want  []*backend.DeadLetter
	}{{0, []*backend.DeadLetter{a1, a2, a3}}, {-1, []*backend.DeadLetter{a1, a2, a3}},
		{1, []*backend.DeadLetter{a1}}, {2, []*backend.DeadLetter{a1, a2}}, {10, []*backend.DeadLetter{a1, a2, a3}}} {
		sameLetters(t, fmt.Sprintf("List(scale, %d)", tc.limit), list(t, q, "scale", tc.limit), tc.want)
	}
	sameLetters(t, "List(labelbox, 0)", list(t, q, "labelbox", 0), []*backend.DeadLetter{b1, b2})
	if got := list(t, q, "never-used", 0); len(got) != 0 {
		t.Fatalf("List of an unknown sink: %v", ids(got))
	}

	sameSet(t, "Take(scale, [a2])", take(t, q, "scale", []string{a2.ID}), []*backend.DeadLetter{a2})
	wantLen(t, q, "scale", 2)
	sameLetters(t, "List after Take", list(t, q, "scale", 0), []*backend.DeadLetter{a1, a3})
	if got := take(t, q, "scale", []string{a2.ID}); len(got) != 0 {
		t.Fatalf("an entry was taken twice: %v", ids(got))
	}
	// a2's id is unknown now: ignored, while a3 is taken.
	sameSet(t, "Take(scale, [a3, taken a2])", take(t, q, "scale", []string{a3.ID, a2.ID}), []*backend.DeadLetter{a3})
	wantLen(t, q, "scale", 1)
	wantLen(t, q, "labelbox", 2)

	a4 := deadLetter("scale", 4)
	add(t, q, a4)
	sameSet(t, "Take(scale, nil)", take(t, q, "scale", nil), []*backend.DeadLetter{a1, a4})
	wantLen(t, q, "scale", 0)
	if got := list(t, q, "scale", 0); len(got) != 0 {
		t.Fatalf("List after taking all: %v", ids(got))
	}
	sameLetters(t, "List(labelbox) after taking all of scale", list(t, q, "labelbox", 0), []*backend.DeadLetter{b1, b2})
	sameSet(t, "Take(labelbox, [])", take(t, q, "labelbox", []string{}), []*backend.DeadLetter{b1, b2})
	wantLen(t, q, "labelbox", 0)
}

func testDLQRoundTrip(t *testing.T, newBackend Constructor) {
	q := openDLQ(t, newBackend(t))
	unrendered := deadLetter("scale", 0)
	unrendered.Chunk = -1 // the sink could not render the export
	unrendered.Status, unrendered.Answer, unrendered.TraceID = 0, "", ""
	unrendered.Error = "render: template: missing field \"project\"\nsecond line ünïcode"
	bare := &backend.DeadLetter{Sink: "scale", ExportID: "exp-bare", Chunk: 2, Error: "gave up",
		Attempts: 7, FailedAt: "2026-01-02T03:04:05Z"} // no message
	full := deadLetter("scale", 9)
	full.Message.Metadata.Set(backend.MetaReplayTopic, backend.TopicExports)
	want := []*backend.DeadLetter{unrendered, bare, full}

	// Compare with copies: a backend may hand back what it was given.
	copies := make([]*backend.DeadLetter, len(want))
	for i, d := range want {
		c := *d
		if d.Message != nil {
			c.Message = d.Message.Copy()
		}
		copies[i] = &c
	}
	add(t, q, want...)
	for i := range copies {
		copies[i].ID = want[i].ID
	}
	sameLetters(t, "List", list(t, q, "scale", 0), copies)
	sameSet(t, "Take", take(t, q, "scale", []string{bare.ID, full.ID, unrendered.ID}), copies)
	wantLen(t, q, "scale", 0)
}

func testDLQConcurrentAdd(t *testing.T, newBackend Constructor) {
	q := openDLQ(t, newBackend(t))
	const n = 20
	ds := make([]*backend.DeadLetter, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range ds {
		ds[i] = deadLetter("scale", i)
		wg.Go(func() {
			<-start
			errs[i] = q.Add(t.Context(), ds[i])
		})
	}
	close(start)
	wg.Wait()
	seen := map[string]bool{}
	for i, d := range ds {
		if errs[i] != nil {
			t.Fatalf("Add %d: %v", i, errs[i])
		}
		if d.ID == "" || seen[d.ID] {
			t.Fatalf("concurrent Adds gave ids %v: empty or repeated", ids(ds))
		}
		seen[d.ID] = true
	}
	wantLen(t, q, "scale", n)
	sameSet(t, "List after concurrent Adds", list(t, q, "scale", 0), ds)
}

func testDLQShared(t *testing.T, f Features, newBackend Constructor, reopen Reopener) {
	b1 := newBackend(t)
	b2 := reopen(t, b1)
	q1, q2 := openDLQ(t, b1), openDLQ(t, b2)
	d1, d2 := deadLetter("scale", 1), deadLetter("scale", 2)
	add(t, q1, d1)
	add(t, q2, d2)
	sameLetters(t, "List through the second backend", list(t, q2, "scale", 0), []*backend.DeadLetter{d1, d2})
	sameSet(t, "Take through the second backend", take(t, q2, "scale", []string{d1.ID}), []*backend.DeadLetter{d1})
	wantLen(t, q1, "scale", 1)
	sameLetters(t, "List through the first backend", list(t, q1, "scale", 0), []*backend.DeadLetter{d2})
}
