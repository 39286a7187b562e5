package stages

import (
	"time"

	"github.com/labelpipe/labelpipe/pipeline"
)

// SetSecretClock replaces the clock a secret stage checks
// webhook-timestamp against.
func SetSecretClock(s pipeline.Stage, now func() time.Time) { s.(*Secret).now = now }

// Clip is clip, the cut of a violation's message to maxMessage bytes.
var Clip = clip

// MaxMessage is maxMessage.
const MaxMessage = maxMessage
