// Package builtin is the one place that knows labelpipe's own types: the
// stages, the sinks and the memory and redis backends. It imports the
// core, never the reverse. The daemon uses it, and so can an embedder:
//
//	reg := builtin.Registry()
//	reg.RegisterStage("stamp", pipeline.NewStageType(...)) // your own types
//	p, err := pipeline.New(cfg, pipeline.Options{Registry: reg})
//
// An embedder that wants fewer dependencies builds its own registry from
// pipeline.NewRegistry() and the packages it needs (at least one backend
// for broker.type).
package builtin

import (
	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/pipeline/backend/memory"
	"github.com/labelpipe/labelpipe/pipeline/backend/redis"
	"github.com/labelpipe/labelpipe/sinks"
	"github.com/labelpipe/labelpipe/stages"
)

// Registry returns a new registry holding every built-in type. Embedders
// add their own types to it.
func Registry() *pipeline.Registry {
	r := pipeline.NewRegistry()
	stages.Register(r)
	sinks.Register(r)
	r.RegisterBackend(memory.Kind, memory.Type)
	r.RegisterBackend(redis.Kind, redis.Type)
	return r
}
