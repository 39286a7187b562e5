package sinks_test

import (
	"net/http"
	"strings"
	"testing"
)

// Only a 3xx is a redirect: a 400 that happens to carry a Location header
// is reported with the vendor's own message.
func TestHTTP400WithLocationIsNotARedirect(t *testing.T) {
	v := newVendor(t, answer{status: http.StatusBadRequest, body: `{"error":"vendor says bad field"}`,
		header: map[string]string{"Location": "/elsewhere"}})
	s := newHTTPSink(t, v.URL, nil)
	de := deliveryError(t, s.Send(t.Context(), request(`{"a":1}`)))
	if strings.Contains(de.Msg, "redirect") || !strings.Contains(de.Msg, "vendor says bad field") {
		t.Errorf("msg %q: want the vendor's message, not a redirect", de.Msg)
	}
}

// The target of a redirect is redacted before it is put in the error, as
// the sink's own URL is.
func TestHTTPRedirectTargetIsRedacted(t *testing.T) {
	const secret = "Zx9Kq4SECRETw7Lm2Pv5"
	v := newVendor(t, answer{status: http.StatusFound,
		header: map[string]string{"Location": "https://new.example/hook?token=" + secret}})
	s := newHTTPSink(t, v.URL, nil)
	de := deliveryError(t, s.Send(t.Context(), request(`{"a":1}`)))
	if strings.Contains(de.Msg, secret) {
		t.Errorf("msg %q shows the secret in the redirect target", de.Msg)
	}
	if !strings.Contains(de.Msg, "redirect to https://new.example/hook?token=REDACTED") {
		t.Errorf("msg %q: want the redacted redirect target", de.Msg)
	}
}

// A 300 with a Location is a redirect too: the lower bound of 3xx counts.
func TestHTTP300WithLocationIsARedirect(t *testing.T) {
	v := newVendor(t, answer{status: http.StatusMultipleChoices, body: `{"error":"choose"}`,
		header: map[string]string{"Location": "/moved"}})
	s := newHTTPSink(t, v.URL, nil)
	de := deliveryError(t, s.Send(t.Context(), request(`{"a":1}`)))
	if !strings.Contains(de.Msg, "/moved: fix the sink's url") {
		t.Errorf("msg %q should say where the redirect points", de.Msg)
	}
}
