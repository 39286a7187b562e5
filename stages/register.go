// Package stages holds labelpipe's built-in ingress stage types, one file
// each.
package stages

import "github.com/labelpipe/labelpipe/pipeline"

// Register adds every built-in stage type to r.
func Register(r *pipeline.Registry) {
	r.RegisterStage("secret", pipeline.NewStageType(
		"checks the caller's shared secret or signature (X-Aquarium-Secret, Standard Webhooks, GitHub); 401 if wrong",
		SecretDefaults, buildSecret))
	r.RegisterStage("schema", pipeline.NewStageType(
		"validates listed events against a JSON Schema (built-in issue-exported or a file); 422 lists the violations, at most max_violations",
		SchemaDefaults, buildSchema))
	r.RegisterStage("dedupe", pipeline.NewStageType(
		"answers duplicate for an export already accepted within ttl (memory or Redis store)",
		DedupeDefaults, buildDedupe))
	r.RegisterStage("filter", pipeline.NewStageType(
		"drops exports a jq predicate is false for",
		FilterDefaults, buildFilter))
	r.RegisterStage("rate_limit", pipeline.NewStageType(
		"answers 429 with Retry-After past a rate of webhooks per second (one bucket, or one per jq key)",
		RateLimitDefaults, buildRateLimit))
	r.RegisterStage("transform", pipeline.NewStageType(
		"replaces the payload with the value of a jq program",
		TransformDefaults, buildTransform))
}
