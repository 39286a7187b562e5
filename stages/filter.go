package stages

import (
	"context"
	"fmt"
	"net/http"

	"github.com/labelpipe/labelpipe/pipeline"
)

// The filter stage drops exports a jq predicate is false for. A dropped
// export is answered 2xx with the reason, so the caller does not retry it;
// a predicate that fails at run time answers 422 saying why.
//
// The program sees the payload as `.` and `$export` (id, received_at,
// event, project, issue_id, attrs).
//
//	- type: filter
//	  expr: '.project == "pedestrian_detection"'

// FilterConfig configures the filter stage.
type FilterConfig struct {
	// Expr is a jq predicate; the export passes when its first value is
	// neither false nor null. No value counts as false. Required.
	Expr string `yaml:"expr"`
}

// FilterDefaults returns the filter stage's default config.
func FilterDefaults() *FilterConfig { return &FilterConfig{} }

// Validate compiles the program, so a bad one is reported at load.
func (c *FilterConfig) Validate() error {
	return validateExpr(c.Expr, `a jq predicate, e.g. '.event == "issue-exported"'`)
}

func buildFilter(c *FilterConfig, env pipeline.Env) (pipeline.Stage, error) {
	prog, err := pipeline.CompileJQ(c.Expr)
	if err != nil {
		return nil, fmt.Errorf("expr: %w", err)
	}
	return &Filter{name: env.Name, prog: prog}, nil
}

// Filter is the filter stage.
type Filter struct {
	name string
	prog *pipeline.JQ
}

// Process passes the export if the predicate holds and drops it otherwise.
func (f *Filter) Process(ctx context.Context, e *pipeline.Export) error {
	ok, err := f.prog.Bool(ctx, e.Payload, e.Info())
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("filter %s: %w", f.name, ctx.Err())
		}
		return pipeline.Reject(http.StatusUnprocessableEntity, "filter %s failed: %v", f.name, err)
	}
	if !ok {
		return pipeline.Drop("filter %s: expression is false", f.name)
	}
	return nil
}

// validateExpr checks a required jq program field named expr.
func validateExpr(expr, example string) error {
	if expr == "" {
		return pipeline.FieldErr("expr", "is required (%s)", example)
	}
	if _, err := pipeline.CompileJQ(expr); err != nil {
		return pipeline.FieldErr("expr", "%v", err)
	}
	return nil
}

var _ pipeline.Stage = (*Filter)(nil)
