package resilience_test

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/internal/testutil"
	"github.com/labelpipe/labelpipe/pipeline/resilience"
)

// TestSharedBreakerHealthyStoreLogsNothing: failures recorded in the
// shared state, and the success that ends their streak, are the store
// doing its job: recording them logs no "state unavailable" warning (nor
// the "available again" that would follow one).
func TestSharedBreakerHealthyStoreLogsNothing(t *testing.T) {
	c := fastConfig()
	c.Retry.MaxAttempts = 3
	c.Breaker = resilience.Breaker{ConsecutiveFailures: 5, OpenTimeout: time.Minute, SyncInterval: time.Minute}
	store := newMemStore()
	var logs testutil.LockedBuffer
	p := newPolicy(t, c, resilience.Options{Name: "labelbox", Store: store, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	s := &script{errs: repeat(errRetry, 2)}
	if n, err := p.Do(t.Context(), s.attempt); n != 3 || err != nil {
		t.Fatalf("Do = %d, %v; want two failures then success", n, err)
	}
	if st := sharedState(t, store); st.Counts.TotalFailures != 2 || st.Counts.ConsecutiveFailures != 0 {
		t.Fatalf("shared counts %+v, want both failures recorded and the streak ended", st.Counts)
	}
	if got := logs.String(); strings.Contains(got, "shared breaker state") {
		t.Fatalf("a healthy store's outcomes logged:\n%s", got)
	}
}
