package e2e_test

import (
	"bytes"
	"net/http"
	"testing"
	"time"
)

// TestKillsAtTheDangerousMoments builds the daemon with failpoints and
// kills it (SIGKILL, from inside) at each moment where a crash could lose
// or repeat an export: after the dedupe reservation and before the
// publish, after the publish and before the answer, and after a vendor
// got a request and before the ledger recorded it. The caller then
// retries, as Aquarium does on connection errors and 5xx, against the
// restarted replica. The invariant: every export answered 2xx, "duplicate"
// included, reaches every sink; Scale and Labelbox never hold a repeat.
func TestKillsAtTheDangerousMoments(t *testing.T) {
	bin := buildLabelpipe(t, "failpoints")
	for _, tc := range []struct {
		point string
		// maxRepeats: before-publish stored nothing, so the retry is the
		// only copy. after-publish stored an export nobody was told
		// about, and after-delivery killed between a vendor's answer and
		// the delivered-record: see killRepeats. Scale and Labelbox must
		// absorb every repeat.
		maxRepeats int
	}{{"before-publish", noRepeat}, {"after-publish", killRepeats}, {"after-delivery", killRepeats}} {
		point := tc.point
		t.Run(point, func(t *testing.T) {
			r := newRig(t, bin, rigOptions{dedupeHold: "1s"})
			a := r.start("a", "LABELPIPE_FAILPOINT="+point)
			body := r.exportBody(point)
			var answered []string
			// after-delivery usually kills after the 202 is written, but a
			// delivery may win the race with the answer's write: the
			// caller then retries like the others.
			if status, _, _, err := r.postErr(a, body); err == nil && status == http.StatusAccepted {
				answered = append(answered, issueOf(t, body))
			}
			select {
			case <-a.done:
			case <-time.After(30 * time.Second):
				t.Fatalf("replica a still running: failpoint %s never hit", point)
			}
			a.run() // without the failpoint
			a.waitReady(t, 30*time.Second)

			if len(answered) == 0 {
				answered = append(answered, r.retryUntilAnswered(t, a, body))
			}
			r.waitDelivered(t, answered, 60*time.Second)
			// after-publish stored an export nobody was told about, and
			// the retry stored a second: its idempotency keys derive from
			// the content, so Scale and Labelbox still hold it once.
			r.checkExactlyOnce(t, answered, tc.maxRepeats)
		})
	}
}

// retryUntilAnswered posts body until it gets a 2xx (202, or 200
// duplicate) and returns its issue id. It fails on an answer
// other than 2xx or 503, and after 30s.
func (r *rig) retryUntilAnswered(t *testing.T, rp *replica, body []byte) string {
	t.Helper()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	deadline := time.Now().Add(30 * time.Second)
	for {
		status, _, b, err := r.postErr(rp, body)
		switch {
		case err == nil && (status == http.StatusAccepted ||
			status == http.StatusOK && bytes.Contains(b, []byte(`"duplicate"`))):
			return issueOf(t, body)
		case err == nil && status != http.StatusServiceUnavailable:
			t.Fatalf("retry answered %d %s", status, b)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no 2xx within 30s; last %d %s %v", status, b, err)
		}
		<-tick.C
	}
}
