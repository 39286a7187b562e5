package stages_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/pipeline"
)

func TestRateLimit(t *testing.T) {
	tests := []struct {
		name     string
		opts     string
		projects []string // one webhook each, in this order
		want     []int    // 0 passes, else the rejecting status
	}{
		{"burst passes, then 429", "{per_second: 0.5, burst: 2}",
			[]string{"a", "a", "a"}, []int{0, 0, http.StatusTooManyRequests}},
		{"default burst is the rate rounded up", "{per_second: 0.5}",
			[]string{"a", "a"}, []int{0, http.StatusTooManyRequests}},
		{"a bucket per key", "{per_second: 0.5, burst: 1, key: .project}",
			[]string{"a", "b", "a", "b"}, []int{0, 0, http.StatusTooManyRequests, http.StatusTooManyRequests}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := mustBuild(t, "rate_limit", tc.opts, pipeline.Env{})
			for i, project := range tc.projects {
				e := &pipeline.Export{ID: "x", Payload: map[string]any{"event": "issue-exported", "project": project}}
				err := st.Process(t.Context(), e)
				if tc.want[i] == 0 {
					if err != nil {
						t.Fatalf("webhook %d (%s): %v, want it through", i, project, err)
					}
					continue
				}
				se, ok := pipeline.AsStageError(err)
				if !ok || se.Status != tc.want[i] {
					t.Fatalf("webhook %d (%s): %v, want status %d", i, project, err, tc.want[i])
				}
				// At 0.5/s the next token is at most 2s away.
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
