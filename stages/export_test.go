package stages

import (
	"time"

	"github.com/labelpipe/labelpipe/pipeline"
)

// SetRateLimitClock lets the black-box tests move a rate_limit stage's
// clock instead of sleeping.
func SetRateLimitClock(s pipeline.Stage, now func() time.Time) { s.(*RateLimit).now = now }
