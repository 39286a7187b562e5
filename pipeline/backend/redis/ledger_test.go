package redis_test

import (
	"strconv"
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/internal/redistest"
	"github.com/labelpipe/labelpipe/pipeline/backend"
	redisb "github.com/labelpipe/labelpipe/pipeline/backend/redis"
)

func TestRedisLedger(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	for _, tc := range []struct {
		name    string
		ttl     time.Duration
		expires bool
	}{
		{"expires after ttl", 300 * time.Millisecond, true},
		{"zero ttl keeps", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.Context()
			l := redisb.NewLedger(rdb, testPrefix+tc.name+":", tc.ttl)
			key := backend.DeliveryKey{ExportID: "exp-1", Sink: "scale", Chunk: 0}
			if r, err := l.Lookup(ctx, key); err != nil || r.Delivered {
				t.Fatalf("delivered before record: %+v %v", r, err)
			}
			if err := l.Record(ctx, key, backend.DeliveryRecord{Attempts: 1}); err != nil {
				t.Fatal(err)
			}
			if r, err := l.Lookup(ctx, key); err != nil || !r.Delivered {
				t.Fatalf("not delivered after record: %+v %v", r, err)
			}
			if r, _ := l.Lookup(ctx, backend.DeliveryKey{ExportID: "exp-1", Sink: "scale", Chunk: 1}); r.Delivered {
				t.Fatal("another chunk counts as delivered")
			}
			pttl := rdb.PTTL(ctx, testPrefix+tc.name+":delivered:exp-1.scale.0").Val()
			if !tc.expires {
				if pttl != -1 {
					t.Fatalf("pttl %s, want none", pttl)
				}
				return
			}
			if pttl <= 0 || pttl > tc.ttl {
				t.Fatalf("pttl %s, want in (0, %s]", pttl, tc.ttl)
			}
			deadline := time.After(5 * time.Second)
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			for {
				r, err := l.Lookup(ctx, key)
				ok := r.Delivered
				if err != nil {
					t.Fatal(err)
				}
				if !ok {
					return
				}
				select {
				case <-deadline:
					t.Fatal("record did not expire")
				case <-tick.C:
				}
			}
		})
	}
}

func TestRedisLedgerErrorsWhenRedisIsDown(t *testing.T) {
	srv := redistest.Start(t)
	l := redisb.NewLedger(srv.Client(t), testPrefix, time.Minute)
	srv.Stop()
	if _, err := l.Lookup(t.Context(), backend.DeliveryKey{ExportID: "k"}); err == nil {
		t.Fatal("Lookup without redis gave no error")
	}
	if err := l.Record(t.Context(), backend.DeliveryKey{ExportID: "k"}, backend.DeliveryRecord{Attempts: 1}); err == nil {
		t.Fatal("Record without redis gave no error")
	}
	if _, err := l.LookupMany(t.Context(), []backend.DeliveryKey{{ExportID: "k"}}); err == nil {
		t.Fatal("LookupMany without redis gave no error")
	}
}

// A delivered key written before the attempts and time were kept ("1")
// still reads as delivered; a garbled one is an error, not a guess.
func TestRedisLedgerOldDeliveredValue(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := t.Context()
	l := redisb.NewLedger(rdb, testPrefix, time.Minute)
	for _, tc := range []struct {
		value   string
		want    backend.DeliveryRecord
		wantErr bool
	}{
		{"1", backend.DeliveryRecord{Delivered: true}, false},
		{"4 1790000000123", backend.DeliveryRecord{Delivered: true, Attempts: 4, DeliveredAt: time.UnixMilli(1790000000123)}, false},
		{"x 1790000000123", backend.DeliveryRecord{}, true},
		{"4 y", backend.DeliveryRecord{}, true},
	} {
		key := backend.DeliveryKey{ExportID: "old", Sink: "scale", Chunk: 0}
		if err := rdb.Set(ctx, testPrefix+"delivered:"+key.String(), tc.value, 0).Err(); err != nil {
			t.Fatal(err)
		}
		r, err := l.Lookup(ctx, key)
		if (err != nil) != tc.wantErr || r.Delivered != tc.want.Delivered || r.Attempts != tc.want.Attempts || !r.DeliveredAt.Equal(tc.want.DeliveredAt) {
			t.Errorf("Lookup of delivered value %q = %+v, %v; want %+v (error: %v)", tc.value, r, err, tc.want, tc.wantErr)
		}
	}
}

// A request's steps expire ttl after the last one was saved, delivered or
// not; with ttl 0 they are kept.
func TestRedisLedgerStepsExpire(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	for _, tc := range []struct {
		name string
		ttl  time.Duration
	}{
		{"expire after ttl", 300 * time.Millisecond},
		{"zero ttl keeps", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.Context()
			prefix := testPrefix + "steps " + tc.name + ":"
			l := redisb.NewLedger(rdb, prefix, tc.ttl)
			key := backend.DeliveryKey{ExportID: "exp-1", Sink: "cvat", Chunk: 0}
			if err := l.SaveStep(ctx, key, "task_id", "7"); err != nil {
				t.Fatal(err)
			}
			if err := l.Record(ctx, key, backend.DeliveryRecord{Attempts: 1}); err != nil {
				t.Fatal(err)
			}
			if r, err := l.Lookup(ctx, key); err != nil || !r.Delivered || r.Steps["task_id"] != "7" {
				t.Fatalf("after SaveStep and Record: %+v, %v", r, err)
			}
			pttl := rdb.PTTL(ctx, prefix+"steps:exp-1.cvat.0").Val()
			if tc.ttl == 0 {
				if pttl != -1 {
					t.Fatalf("pttl %s, want none", pttl)
				}
				return
			}
			if pttl <= 0 || pttl > tc.ttl {
				t.Fatalf("pttl %s, want in (0, %s]", pttl, tc.ttl)
			}
			deadline := time.After(5 * time.Second)
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			for {
				r, err := l.Lookup(ctx, key)
				if err != nil {
					t.Fatal(err)
				}
				if r.Steps == nil {
					return
				}
				select {
				case <-deadline:
					t.Fatal("steps did not expire")
				case <-tick.C:
				}
			}
		})
	}
}

// BenchmarkLedgerLookup prices the read every delivery makes: for a sink
// that saves no step it is the same single MGET as before steps existed
// (one more key in it); with steps, the JSON object is decoded too. Run:
//
//	go test -run '^$' -bench LedgerLookup -benchmem ./pipeline/backend/redis/
func BenchmarkLedgerLookup(b *testing.B) {
	srv := redistest.Start(b)
	l := redisb.NewLedger(srv.Client(b), testPrefix+"bench:", time.Hour)
	ctx := b.Context()
	plain := backend.DeliveryKey{ExportID: "exp-1", Sink: "scale", Chunk: 0}
	stepped := backend.DeliveryKey{ExportID: "exp-1", Sink: "cvat", Chunk: 0}
	for _, s := range [][2]string{{"cvat.task_id", "4711"}, {"cvat.rq_id", "action=create&target=task&target_id=4711"}} {
		if err := l.SaveStep(ctx, stepped, s[0], s[1]); err != nil {
			b.Fatal(err)
		}
	}
	for _, bc := range []struct {
		name  string
		key   backend.DeliveryKey
		steps int
	}{{"steps=0", plain, 0}, {"steps=2", stepped, 2}} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				r, err := l.Lookup(ctx, bc.key)
				if err != nil || len(r.Steps) != bc.steps {
					b.Fatalf("Lookup: %+v, %v", r, err)
				}
			}
		})
	}
}

// BenchmarkLedgerRecord prices the write every delivery makes: one
// pipelined round trip, the attempts and time in the delivered key's value.
//
//	go test -run '^$' -bench LedgerRecord -benchmem ./pipeline/backend/redis/
func BenchmarkLedgerRecord(b *testing.B) {
	srv := redistest.Start(b)
	l := redisb.NewLedger(srv.Client(b), testPrefix+"bench:", time.Hour)
	ctx := b.Context()
	i := 0
	b.ReportAllocs()
	for b.Loop() {
		i++
		key := backend.DeliveryKey{ExportID: "e" + strconv.Itoa(i&1023), Sink: "scale"}
		if err := l.Record(ctx, key, backend.DeliveryRecord{Attempts: 1}); err != nil {
			b.Fatal(err)
		}
	}
	if r, err := l.Lookup(ctx, backend.DeliveryKey{ExportID: "e1", Sink: "scale"}); err != nil || !r.Delivered || r.Attempts != 1 {
		b.Fatalf("after the loop Lookup = %+v, %v; want delivered after 1 attempt", r, err)
	}
}

// BenchmarkLedgerLookupMany prices a history page's read: the records of
// 10 exports × 3 requests in one MGET, against a Lookup each.
//
//	go test -run '^$' -bench LedgerLookupMany -benchmem ./pipeline/backend/redis/
func BenchmarkLedgerLookupMany(b *testing.B) {
	srv := redistest.Start(b)
	l := redisb.NewLedger(srv.Client(b), testPrefix+"bench:", time.Hour)
	ctx := b.Context()
	var keys []backend.DeliveryKey
	for e := range 10 {
		for c := range 3 {
			k := backend.DeliveryKey{ExportID: "exp-" + strconv.Itoa(e), Sink: "scale", Chunk: c}
			keys = append(keys, k)
			if c != 2 {
				if err := l.Record(ctx, k, backend.DeliveryRecord{Attempts: 1}); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	delivered := func(rs []backend.DeliveryRecord) int {
		n := 0
		for _, r := range rs {
			if r.Delivered {
				n++
			}
		}
		return n
	}
	b.Run("many", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			rs, err := l.LookupMany(ctx, keys)
			if err != nil || delivered(rs) != 20 {
				b.Fatalf("LookupMany: %d delivered, %v; want 20", delivered(rs), err)
			}
		}
	})
	b.Run("each", func(b *testing.B) {
		b.ReportAllocs()
		rs := make([]backend.DeliveryRecord, len(keys))
		for b.Loop() {
			for i, k := range keys {
				r, err := l.Lookup(ctx, k)
				if err != nil {
					b.Fatal(err)
				}
				rs[i] = r
			}
			if delivered(rs) != 20 {
				b.Fatalf("Lookup: %d delivered, want 20", delivered(rs))
			}
		}
	})
}
