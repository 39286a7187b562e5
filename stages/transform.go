package stages

import (
	"context"
	"fmt"
	"net/http"

	"github.com/labelpipe/labelpipe/pipeline"
)

// The transform stage replaces the payload with the value of a jq program,
// for example to normalise the label coordinate frame field's two
// spellings before the sinks see it. The program must yield exactly one
// value; anything else, or a run-time error, answers 422 saying why.
//
// The program sees the payload as `.` and `$export` (id, received_at,
// event, project, issue_id, attrs).
//
//	- type: transform
//	  expr: '.issue.elements |= map(select(.element_type == "frame"))'

// TransformConfig configures the transform stage.
type TransformConfig struct {
	// Expr is a jq program yielding the new payload. Required.
	Expr string `yaml:"expr"`
}

// TransformDefaults returns the transform stage's default config.
func TransformDefaults() *TransformConfig { return &TransformConfig{} }

// Validate compiles the program, so a bad one is reported at load.
func (c *TransformConfig) Validate() error {
	return validateExpr(c.Expr, `a jq program yielding the new payload, e.g. 'del(.issue.elements[].frame_data.custom_metrics)'`)
}

func buildTransform(c *TransformConfig, env pipeline.Env) (pipeline.Stage, error) {
	prog, err := pipeline.CompileJQ(c.Expr)
	if err != nil {
		return nil, fmt.Errorf("expr: %w", err)
	}
	return &Transform{name: env.Name, prog: prog}, nil
}

// Transform is the transform stage.
type Transform struct {
	name string
	prog *pipeline.JQ
}

// Process replaces e.Payload with the program's one value.
func (t *Transform) Process(ctx context.Context, e *pipeline.Export) error {
	vs, err := t.prog.Run(ctx, e.Payload, e.Info())
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("transform %s: %w", t.name, ctx.Err())
		}
		return pipeline.Reject(http.StatusUnprocessableEntity, "transform %s failed: %v", t.name, err)
	}
	if len(vs) != 1 {
		return pipeline.Reject(http.StatusUnprocessableEntity,
			"transform %s failed: the expression yielded %d values, want exactly one", t.name, len(vs))
	}
	e.Payload = vs[0]
	return nil
}

var _ pipeline.Stage = (*Transform)(nil)
