package sinks_test

import (
	"net/http"
	"strings"
	"testing"
	"unicode/utf8"
)

// sendTo delivers one request to a vendor answering status and body, and
// returns the DeliveryError.
func sendTo(t *testing.T, status int, body string) (msg, ans string) {
	t.Helper()
	v := newVendor(t, answer{status: status, body: body})
	s := newHTTPSink(t, v.URL, nil)
	de := deliveryError(t, s.Send(t.Context(), request(`{"a":1}`)))
	return de.Msg, de.Answer
}

// The vendor's message is the first non-empty usual field of a JSON
// answer, else the first of its "errors", else the start of the text.
func TestVendorMessageFields(t *testing.T) {
	long := strings.Repeat("m", 300)
	for _, tt := range []struct {
		name, body, suffix string
	}{
		{"error field", `{"error":"boom"}`, `: "boom"`},
		{"empty error, then message", `{"error":"","message":"from message"}`, `: "from message"`},
		{"errors list", `{"errors":[{"message":"first"},{"message":"second"}]}`, `: "first"`},
		{"empty errors list", `{"errors":[]}`, `: "{\"errors\":[]}"`},
		{"message of exactly 300 bytes is whole", `{"error":"` + long + `"}`, `: "` + long + `"`},
		{"a character across the 300-byte cut is dropped whole", `{"error":"` + long[1:] + `é"}`, `: "` + long[1:] + `…"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			msg, _ := sendTo(t, http.StatusBadRequest, tt.body)
			if !strings.HasSuffix(msg, tt.suffix) {
				t.Errorf("msg %q, want it to end with %q", msg, tt.suffix)
			}
		})
	}
}

// Without success_status, a 300 is not a success.
func TestHTTP300IsNoSuccess(t *testing.T) {
	msg, _ := sendTo(t, http.StatusMultipleChoices, `{"error":"choose"}`)
	if !strings.Contains(msg, "300") {
		t.Errorf("msg %q, want the 300 named", msg)
	}
}

// The answer kept is at most 2 KiB and always valid UTF-8: a character
// straddling the limit is dropped whole, never kept half.
func TestAnswerIsCutOnACharacter(t *testing.T) {
	for _, tt := range []struct {
		name, body string
		wantLen    int
	}{
		{"short", "short", 5},
		{"exactly the limit", strings.Repeat("a", 2048), 2048},
		{"a character across the limit", strings.Repeat("a", 2047) + "é" + strings.Repeat("b", 100), 2047},
		{"a character ending at the limit", strings.Repeat("a", 2046) + "é" + strings.Repeat("b", 100), 2048},
		{"a 4-byte character across the limit", strings.Repeat("a", 2046) + "😀" + "b", 2046},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, ans := sendTo(t, http.StatusBadRequest, tt.body)
			if !utf8.ValidString(ans) || len(ans) != tt.wantLen || !strings.HasPrefix(tt.body, ans) {
				t.Errorf("answer of %d bytes (valid UTF-8: %v), want the first %d bytes of the body", len(ans), utf8.ValidString(ans), tt.wantLen)
			}
		})
	}
}
