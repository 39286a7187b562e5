package sinks_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/labelpipe/labelpipe/sinks"
)

// success_status takes 100 to 599, both included.
func TestHTTPSuccessStatusRange(t *testing.T) {
	for _, tt := range []struct {
		status int
		ok     bool
	}{{99, false}, {100, true}, {599, true}, {600, false}} {
		c := sinks.HTTPDefaults()
		c.URL = "https://api.example.com/v1"
		c.SuccessStatus = []int{tt.status}
		if err := c.Validate(); (err == nil) != tt.ok {
			t.Errorf("success_status [%d]: Validate = %v, want ok %v", tt.status, err, tt.ok)
		}
	}
}

// A 2xx outside success_status says so; a 3xx or a 4xx does not.
func TestHTTPNotInSuccessStatusMark(t *testing.T) {
	for _, tt := range []struct {
		status int
		mark   bool
	}{{200, true}, {299, true}, {300, false}, {400, false}} {
		v := newVendor(t, answer{status: tt.status, body: `{"error":"e"}`})
		s := newHTTPSink(t, v.URL, func(c *sinks.HTTPConfig) { c.SuccessStatus = []int{201} })
		de := deliveryError(t, s.Send(t.Context(), request(`{"a":1}`)))
		if got := strings.Contains(de.Msg, "(not in success_status)"); got != tt.mark {
			t.Errorf("status %d: msg %q, want the success_status mark %v", tt.status, de.Msg, tt.mark)
		}
	}
}

// A GraphQL answer with several errors names the first that decides and
// counts the others.
func TestGraphQLCountsTheOtherErrors(t *testing.T) {
	for _, tt := range []struct {
		body, more string
	}{
		{gqlErrors(gqlErr("AUTHORIZATION_ERROR", "a")), ""},
		{gqlErrors(gqlErr("AUTHORIZATION_ERROR", "a"), gqlErr("BAD_USER_INPUT", "b")), " (and 1 more)"},
		{gqlErrors(gqlErr("AUTHORIZATION_ERROR", "a"), gqlErr("BAD_USER_INPUT", "b"), gqlErr("BAD_USER_INPUT", "c")), " (and 2 more)"},
	} {
		v := newVendor(t, answer{status: http.StatusOK, body: tt.body})
		s := newGraphQLSink(t, v.URL, nil)
		de := deliveryError(t, s.Send(t.Context(), request(`{"a":1}`)))
		if tt.more == "" && strings.Contains(de.Msg, "more)") || tt.more != "" && !strings.HasSuffix(de.Msg, tt.more) {
			t.Errorf("msg %q, want it to end with %q", de.Msg, tt.more)
		}
	}
}

// "Already done" errors mean an earlier attempt succeeded only when the
// vendor did not fail: from a 5xx they are not taken as success.
func TestGraphQLAlreadyDoneFromA5xxIsNoSuccess(t *testing.T) {
	v := newVendor(t, answer{status: http.StatusInternalServerError, body: gqlErrors(gqlErr("BAD_USER_INPUT", "Batch already exists"))})
	s := newGraphQLSink(t, v.URL, func(c *sinks.GraphQLConfig) { c.AlreadyDone = "already exists" })
	if de := deliveryError(t, s.Send(t.Context(), request(`{"a":1}`))); !de.Retry || de.Status != http.StatusInternalServerError {
		t.Errorf("DeliveryError status %d retry %v, want 500 retry", de.Status, de.Retry)
	}
}
