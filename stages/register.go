// Package stages holds labelpipe's built-in ingress stage types, one file
// each.
package stages

import "github.com/labelpipe/labelpipe/pipeline"

// Register adds every built-in stage type to r.
func Register(r *pipeline.Registry) {
}
