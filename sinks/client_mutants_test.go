package sinks_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/labelpipe/labelpipe/internal/vendortest"
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

// A sink's HTTP client records its request metrics with the meter
// provider the embedder injected, not with a no-op one.
func TestVendorClientMetricsUseTheInjectedProvider(t *testing.T) {
	c := vendortest.NewCVAT(t, cvatToken, 3)
	b := buildPreset(t, cvatYAML(c.URL, cvatToken, ""), nil)
	if err := b.sink.Send(t.Context(), b.render(t, mixedIssue("iss-metrics"))[0]); err != nil {
		t.Fatal(err)
	}
	var rm metricdata.ResourceMetrics
	if err := b.metrics.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == "http.client.request.duration" {
				return
			}
			names = append(names, m.Name)
		}
	}
	t.Errorf("no http.client.request.duration among the metrics recorded: %v", names)
}
