// Package sinks holds labelpipe's built-in sink types, one file each.
package sinks

import "github.com/labelpipe/labelpipe/pipeline"

// Register adds every built-in sink type to r.
func Register(r *pipeline.Registry) {
	r.RegisterSink("http", pipeline.NewSinkType(
		"send each body as a JSON request to a REST API (Scale, Label Studio, CVAT, webhooks)",
		HTTPDefaults, build(NewHTTP)))
	r.RegisterSink("graphql", pipeline.NewSinkType(
		"send a GraphQL query per variables value; errors[] in a 200 are failures (Labelbox)",
		GraphQLDefaults, build(NewGraphQL)))
	r.RegisterSink("file", pipeline.NewSinkType(
		"append each body as one JSON line to a file",
		FileDefaults, build(NewFile)))

	// Vendor presets: a vendor's API from a few lines of config (preset.go).
	r.RegisterSink("labelbox", pipeline.NewSinkType(
		"queue an export's frames in a Labelbox project: createBatchV2 per 100,000 global keys (frame_id)",
		LabelboxDefaults, build(NewLabelbox)))
	r.RegisterSink("scale", pipeline.NewSinkType(
		"create one Scale AI imageannotation task per element (unique_id per export and element)",
		ScaleDefaults, build(NewScale)))
	r.RegisterSink("label_studio", pipeline.NewSinkType(
		"import an export's elements as Label Studio tasks, 1,000 per import",
		LabelStudioDefaults, build(NewLabelStudio)))
	r.RegisterSink("cvat", pipeline.NewSinkType(
		"create a CVAT task per export, attach its images as remote_files and follow the import (checkpointed steps)",
		CVATDefaults, build(NewCVAT)))
}

// build adapts a typed constructor, so that a failed build returns a nil
// Sink rather than a typed nil.
func build[C any, S pipeline.Sink](f func(*C, pipeline.Env) (S, error)) func(*C, pipeline.Env) (pipeline.Sink, error) {
	return func(c *C, env pipeline.Env) (pipeline.Sink, error) {
		s, err := f(c, env)
		if err != nil {
			return nil, err
		}
		return s, nil
	}
}
