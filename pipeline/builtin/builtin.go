// Package builtin registers labelpipe's own stage and sink types.
package builtin

import (
	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/sinks"
	"github.com/labelpipe/labelpipe/stages"
)

// Registry returns a new registry holding every built-in type. Embedders
// add their own types to it.
func Registry() *pipeline.Registry {
	r := pipeline.NewRegistry()
	stages.Register(r)
	sinks.Register(r)
	return r
}
