package pipeline_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/labelpipe/labelpipe/pipeline"
)

// TestNestedKeyErrorsAllReported: a bad key inside a mapping (retry here)
// is reported at its own line:col, and does not hide what is wrong with
// the keys beside it, in either order; the good keys beside it keep their
// meaning and the defaults of the keys not given.
func TestNestedKeyErrorsAllReported(t *testing.T) {
	const head = "server: {addr: \"\"}\nadmin: {addr: \"\"}\nsinks:\n  - name: archive\n    type: file\n    path: out/a.jsonl\n    retry:\n"
	// Lines 8 onwards are the retry mapping's keys, at column 7.
	tests := []struct {
		name  string
		retry string
		want  []string
	}{
		{"unknown key after the bad value", "      max_attempts: 0\n      max_attempt: 3\n", []string{
			`test.yaml:8:21: sinks[0] "archive": retry.max_attempts: must be ≥ 1`,
			`test.yaml:9:7: sinks[0] "archive": retry: unknown field "max_attempt"`,
		}},
		{"unknown key before the bad value", "      max_attempt: 3\n      max_attempts: 0\n", []string{
			`test.yaml:8:7: sinks[0] "archive": retry: unknown field "max_attempt"`,
			`test.yaml:9:21: sinks[0] "archive": retry.max_attempts: must be ≥ 1`,
		}},
		{"unknown key, bad duration and bad value", "      max_attempts: 0\n      initial_interval: fast\n      bogus: 1\n", []string{
			`test.yaml:8:21: sinks[0] "archive": retry.max_attempts: must be ≥ 1`,
			`test.yaml:9:25: sinks[0] "archive": retry.initial_interval: bad duration: invalid duration "fast"`,
			`test.yaml:10:7: sinks[0] "archive": retry: unknown field "bogus"`,
		}},
		// The good keys decode and the rest keep their defaults: a
		// max_interval below the default initial_interval is caught.
		{"good key beside an unknown one still checked", "      max_interval: 1ms\n      bogus: 1\n", []string{
			`test.yaml:8:21: sinks[0] "archive": retry.max_interval: must be ≥ retry.initial_interval`,
			`test.yaml:9:7: sinks[0] "archive": retry: unknown field "bogus"`,
		}},
		{"only the unknown key", "      max_attempts: 2\n      bogus: 1\n", []string{
			`test.yaml:9:7: sinks[0] "archive": retry: unknown field "bogus"`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := pipeline.ParseConfig("test.yaml", []byte(head+tt.retry))
			var ces pipeline.ConfigErrors
			if !errors.As(err, &ces) {
				t.Fatalf("ParseConfig = %v, want ConfigErrors", err)
			}
			var got []string
			for _, e := range ces {
				got = append(got, e.Error())
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %d errors, want %d:\n%s", len(got), len(tt.want), strings.Join(got, "\n"))
			}
			for i := range tt.want {
				if !strings.HasPrefix(got[i], tt.want[i]) {
					t.Errorf("error %d = %q, want it to start %q", i, got[i], tt.want[i])
				}
			}
		})
	}
}
