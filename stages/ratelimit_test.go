package stages_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/stages"
)

func TestRateLimit(t *testing.T) {
	// step is one webhook, sent once the stage's clock has moved on by
	// `after`.
	type step struct {
		after   time.Duration
		project string
		want    int // 0 passes, else the rejecting status
	}
	const limited = http.StatusTooManyRequests
	tests := []struct {
		name  string
		opts  string
		steps []step
	}{
		{"burst passes, then 429", "{per_second: 0.5, burst: 2}",
			[]step{{0, "a", 0}, {0, "a", 0}, {0, "a", limited}}},
		{"default burst is the rate rounded up", "{per_second: 0.5}",
			[]step{{0, "a", 0}, {0, "a", limited}}},
		{"a bucket per key", "{per_second: 0.5, burst: 1, key: .project}",
			[]step{{0, "a", 0}, {0, "b", 0}, {0, "a", limited}, {0, "b", limited}}},
		{"a bucket refills", "{per_second: 1, burst: 1, key: .project}",
			[]step{{0, "a", 0}, {0, "a", limited}, {time.Second, "a", 0}}},
		{"rotating through max_keys+5 keys does not reset a limited key",
			"{per_second: 0.5, burst: 2, key: .project, max_keys: 3}",
			[]step{
				{0, "victim", 0}, {0, "victim", 0}, {0, "victim", limited},
				// Two keys fill the cache; the rest share the overflow
				// bucket, whose burst of 2 is soon spent.
				{0, "r1", 0}, {0, "r2", 0}, {0, "r3", 0}, {0, "r4", 0},
				{0, "r5", limited}, {0, "r6", limited}, {0, "r7", limited}, {0, "r8", limited},
				{0, "victim", limited},
			}},
		{"an idle, refilled bucket is evicted and its slot reused",
			"{per_second: 1, burst: 1, key: .project, max_keys: 2}",
			[]step{
				{0, "a", 0}, {0, "b", 0},
				{0, "c", 0}, {0, "d", limited}, // overflow: a and b still refilling
				{time.Second, "c", 0}, // a refilled: c takes its place
				{0, "c", limited},     // …with a bucket of its own
				{0, "a", 0},           // b refilled too: a comes back fresh
				{0, "a", limited},
			}},
		{"overflow bucket limits new keys while the cache is full",
			"{per_second: 1, burst: 1, key: .project, max_keys: 1}",
			[]step{
				{0, "a", 0},
				{0, "b", 0}, {0, "c", limited}, {0, "d", limited},
				{time.Second, "e", 0}, // a refilled: e gets its own bucket
				{0, "f", 0},           // the overflow has refilled too
				{0, "g", limited},
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := mustBuild(t, "rate_limit", tc.opts, pipeline.Env{})
			now := time.Unix(1_700_000_000, 0)
			stages.SetRateLimitClock(st, func() time.Time { return now })
			for i, s := range tc.steps {
				now = now.Add(s.after)
				e := &pipeline.Export{ID: "x", Payload: map[string]any{"event": "issue-exported", "project": s.project}}
				err := st.Process(t.Context(), e)
				if s.want == 0 {
					if err != nil {
						t.Fatalf("webhook %d (%s): %v, want it through", i, s.project, err)
					}
					continue
				}
				se, ok := pipeline.AsStageError(err)
				if !ok || se.Status != s.want {
					t.Fatalf("webhook %d (%s): %v, want status %d", i, s.project, err, s.want)
				}
				// At ≥ 0.5/s the next token is at most 2s away.
				if se.RetryAfter <= 0 || se.RetryAfter > 2*time.Second {
					t.Errorf("Retry-After = %v, want in (0, 2s]", se.RetryAfter)
				}
				if !strings.Contains(se.Msg, "rate limited") {
					t.Errorf("message %q does not say it is rate limited", se.Msg)
				}
			}
		})
	}
}

func TestRateLimitValidate(t *testing.T) {
	_, err := decode(t, "rate_limit", "{burst: -1, key: '.['}")
	got := strings.Join(fieldErrors(t, err), "\n")
	for _, field := range []string{"per_second:", "burst:", "key:"} {
		if !strings.Contains(got, field) {
			t.Errorf("Validate() = %q, want an error on %s", got, field)
		}
	}
}
