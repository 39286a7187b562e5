package stages_test

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/labelpipe/labelpipe/stages"
)

// A message of exactly MaxMessage bytes is kept whole; one byte more is
// cut, and says so.
func TestClipKeepsAMessageOfExactlyTheBound(t *testing.T) {
	exact := strings.Repeat("m", stages.MaxMessage)
	if got := stages.Clip(exact); got != exact {
		t.Errorf("a %d-byte message was changed to %d bytes", len(exact), len(got))
	}
	over := exact + "x"
	if got := stages.Clip(over); got != exact+"… (cut)" {
		t.Errorf("a %d-byte message: got %q…, want the first %d bytes and a mark", len(over), got[:20], stages.MaxMessage)
	}
}

// A cut that falls inside a multi-byte character moves back to the
// character's start: the answer stays within the bound and valid UTF-8.
func TestClipCutsBeforeASplitCharacter(t *testing.T) {
	msg := "a" + strings.Repeat("é", stages.MaxMessage) // byte MaxMessage is the 2nd byte of an é
	got := stages.Clip(msg)
	body, ok := strings.CutSuffix(got, "… (cut)")
	if !ok {
		t.Fatalf("no cut mark: %q…", got[:20])
	}
	if len(body) != stages.MaxMessage-1 {
		t.Errorf("kept %d bytes, want %d (the split é dropped)", len(body), stages.MaxMessage-1)
	}
	if !utf8.ValidString(got) {
		t.Error("the cut message is not valid UTF-8")
	}
}
