package resilience_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/pipeline/resilience"
)

// A request that earlier processes already tried goes on from their
// progress: max_attempts and max_elapsed count every process's attempts,
// and each failed attempt hands its progress to save.
func TestResumeKeepsTheRetryBudget(t *testing.T) {
	for _, tt := range []struct {
		name         string
		maxElapsed   time.Duration
		prior        resilience.Progress
		wantAttempts []int // Attempt.N of the attempts this process makes
		wantSaved    []resilience.Progress
	}{
		{"fresh", 0, resilience.Progress{}, []int{1, 2, 3}, []resilience.Progress{{Attempts: 1, Spent: 1}, {Attempts: 2, Spent: 2}}},
		{"two spent before", 0, resilience.Progress{Attempts: 2, Spent: 2}, []int{3}, nil},
		{"a probe before", 0, resilience.Progress{Attempts: 3, Spent: 2}, []int{4}, nil},
		{"elapsed spent before", time.Minute, resilience.Progress{Attempts: 1, Spent: 1, Elapsed: time.Minute}, []int{2}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := fastConfig()
			c.Retry.MaxAttempts = 3
			c.Retry.MaxElapsed = tt.maxElapsed
			p := newPolicy(t, c, resilience.Options{})
			var got []int
			var saved []resilience.Progress
			n, err := p.Resume(t.Context(), tt.prior, func(pr resilience.Progress) {
				pr.Elapsed = 0 // time spent here varies; the counts must not
				saved = append(saved, pr)
			}, func(_ context.Context, a resilience.Attempt) error {
				got = append(got, a.N)
				return errRetry
			})
			if !errors.Is(err, resilience.ErrExhausted) {
				t.Fatalf("Resume = %d, %v; want the budget exhausted", n, err)
			}
			if len(got) != len(tt.wantAttempts) || n != tt.wantAttempts[len(tt.wantAttempts)-1] {
				t.Fatalf("attempts %v (returned %d), want %v", got, n, tt.wantAttempts)
			}
			for i := range got {
				if got[i] != tt.wantAttempts[i] {
					t.Fatalf("attempts %v, want %v", got, tt.wantAttempts)
				}
			}
			if len(saved) != len(tt.wantSaved) {
				t.Fatalf("saved %+v, want %+v", saved, tt.wantSaved)
			}
			for i := range saved {
				if saved[i] != tt.wantSaved[i] {
					t.Fatalf("saved %+v, want %+v", saved, tt.wantSaved)
				}
			}
		})
	}
}

// The time between processes does not count: a request resumed with
// little elapsed is retried, however long ago it was first tried.
func TestResumeCountsOnlyTimeSpentTrying(t *testing.T) {
	c := fastConfig()
	c.Retry.MaxAttempts = 100
	c.Retry.MaxElapsed = time.Hour
	p := newPolicy(t, c, resilience.Options{})
	calls := 0
	n, err := p.Resume(t.Context(), resilience.Progress{Attempts: 4, Spent: 4, Elapsed: time.Second}, nil,
		func(context.Context, resilience.Attempt) error {
			calls++
			if calls < 3 {
				return errRetry
			}
			return nil
		})
	if err != nil || n != 7 || calls != 3 {
		t.Fatalf("Resume = %d, %v after %d calls; want success at attempt 7", n, err, calls)
	}
}
