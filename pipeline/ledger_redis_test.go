package pipeline_test

import (
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/internal/redistest"
	"github.com/labelpipe/labelpipe/pipeline"
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
			l := pipeline.NewRedisLedger(rdb, testPrefix+tc.name+":", tc.ttl)
			key := "exp-1/scale/0"
			if ok, err := l.Delivered(ctx, key); err != nil || ok {
				t.Fatalf("delivered before record: %v %v", ok, err)
			}
			if err := l.Record(ctx, key); err != nil {
				t.Fatal(err)
			}
			if ok, err := l.Delivered(ctx, key); err != nil || !ok {
				t.Fatalf("not delivered after record: %v %v", ok, err)
			}
			if ok, _ := l.Delivered(ctx, "exp-1/scale/1"); ok {
				t.Fatal("another chunk counts as delivered")
			}
			pttl := rdb.PTTL(ctx, testPrefix+tc.name+":delivered:"+key).Val()
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
				ok, err := l.Delivered(ctx, key)
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
	l := pipeline.NewRedisLedger(srv.Client(t), testPrefix, time.Minute)
	srv.Stop()
	if _, err := l.Delivered(t.Context(), "k"); err == nil {
		t.Fatal("Delivered without redis gave no error")
	}
	if err := l.Record(t.Context(), "k"); err == nil {
		t.Fatal("Record without redis gave no error")
	}
}
