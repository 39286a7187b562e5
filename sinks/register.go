// Package sinks holds labelpipe's built-in sink types, one file each.
package sinks

import "github.com/labelpipe/labelpipe/pipeline"

// Register adds every built-in sink type to r.
func Register(r *pipeline.Registry) {
}
