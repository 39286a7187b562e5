// Package badplugin is a fixture for the architecture test that breaks
// rule 4 on purpose: a would-be plugin that pulls in net/http/pprof and an
// OpenTelemetry exporter. The test asserts the checker reports exactly
// these two. It does not import pipeline, so that its violations do not
// depend on the state of the real tree.
package badplugin

import (
	_ "net/http/pprof" // forbidden: registers debug handlers

	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace" // forbidden: an exporter
)

// Exporter builds a trace exporter, which a plugin has no business doing.
func Exporter() (*stdouttrace.Exporter, error) { return stdouttrace.New() }
