package stages_test

import (
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/stages"
)

// The tolerance is inclusive on both sides: a timestamp exactly tolerance
// before or after now is accepted, one second more is not.
func TestSecretToleranceIsInclusive(t *testing.T) {
	body := samplePayload(t, "issue-frames.json")
	opts := "scheme: standard_webhooks\nsecrets: [" + whsec("key-one") + "]\ntolerance: 5m"
	now := time.Unix(1_700_000_000, 0)
	tests := []struct {
		name   string
		offset time.Duration // of webhook-timestamp from now
		ok     bool
	}{
		{"exactly tolerance old", -5 * time.Minute, true},
		{"exactly tolerance ahead", 5 * time.Minute, true},
		{"a second too old", -5*time.Minute - time.Second, false},
		{"a second too far ahead", 5*time.Minute + time.Second, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := mustBuild(t, "secret", opts, pipeline.Env{})
			stages.SetSecretClock(s, func() time.Time { return now })
			ts := now.Add(tt.offset).Unix()
			h := http.Header{}
			h.Set("webhook-id", "msg_1")
			h.Set("webhook-timestamp", strconv.FormatInt(ts, 10))
			h.Set("webhook-signature", swSign("key-one", "msg_1", ts, body))
			e := newExport(t, body, h)
			err := s.Process(t.Context(), e)
			if tt.ok {
				passed(t, e, err)
				return
			}
			checkUnauthorized(t, err, "webhook-timestamp is more than 5m0s away from now")
		})
	}
}
