package redact_test

import (
	"errors"
	"io"
	"net/url"
	"strings"
	"testing"

	"github.com/labelpipe/labelpipe/pipeline/redact"
)

// The length thresholds of an opaque segment are inclusive: 16 characters
// with a digit, or 24 mixing cases, are a token; one fewer is not.
func TestOpaqueThresholdsAreInclusive(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"16 characters with a digit", "https://in.example/h/abcdefghijklmn12", "https://in.example/h/REDACTED"},
		{"15 characters with a digit", "https://in.example/h/abcdefghijklm12", "https://in.example/h/abcdefghijklm12"},
		{"24 characters mixing cases", "https://in.example/h/AbcdefghijklmnopqrstuvwX", "https://in.example/h/REDACTED"},
		{"23 characters mixing cases", "https://in.example/h/AbcdefghijklmnopqrstuvX", "https://in.example/h/AbcdefghijklmnopqrstuvX"},
		{"user of 16 characters with a digit", "https://abcdefghijklmn12@in.example/", "https://REDACTED@in.example/"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := redact.String(tc.in); got != tc.want {
				t.Errorf("String(%q)\n got %q\nwant %q", tc.in, got, tc.want)
			}
		})
	}
}

// A parameter name is judged once unescaped: a percent-encoded "token"
// is still a token.
func TestEscapedParameterNameIsUnescapedFirst(t *testing.T) {
	got := redact.String("https://x.example/p?to%6Ben=S1&%61uth=S2&page=2")
	want := "https://x.example/p?to%6Ben=REDACTED&%61uth=REDACTED&page=2"
	if got != want {
		t.Errorf("got %q\nwant %q", got, want)
	}
}

// A parameter name that does not unescape is judged as written.
func TestBadlyEscapedParameterNameIsJudgedAsWritten(t *testing.T) {
	got := redact.String("https://x.example/p?api_key%zz=S1&page%zz=2")
	want := "https://x.example/p?api_key%zz=REDACTED&page%zz=2"
	if got != want {
		t.Errorf("got %q\nwant %q", got, want)
	}
}

// A *url.Error given directly comes back as a *url.Error whose URL field,
// the one errors.As hands a caller, is redacted too, not only the message.
func TestErrorRedactsTheURLField(t *testing.T) {
	const secret = "4Ko7ZxB5mPBQl0Vrmu1LbqHk"
	in := &url.Error{Op: "Post", URL: "https://hooks.example/s/" + secret, Err: io.ErrUnexpectedEOF}
	got := redact.Error(in)
	var ue *url.Error
	if !errors.As(got, &ue) {
		t.Fatalf("Error(%v) = %T, not a *url.Error", in, got)
	}
	if strings.Contains(ue.URL, secret) {
		t.Errorf("the *url.Error found by errors.As still holds the secret: %q", ue.URL)
	}
	if ue.Op != "Post" || ue.Err != io.ErrUnexpectedEOF {
		t.Errorf("Op and Err not kept: %#v", ue)
	}
	if in.URL != "https://hooks.example/s/"+secret {
		t.Errorf("the argument was changed: %q", in.URL)
	}
}
