package pipeline

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/itchyny/gojq"
)

// JQ is a jq program compiled once at load. Programs see the payload as `.`
// and the export's facts as `$export` (id, received_at, event, project,
// issue_id; sinks add sink).
type JQ struct {
	src  string
	code *gojq.Code
}

// CompileJQ parses and compiles src. The error says where the program is
// wrong, without repeating the whole program.
//
// A program is compiled once per process: a config's validation and its
// build both ask for it, and a compiled program is safe for concurrent
// use. The cache holds up to maxCompiled programs, far more than any
// config has.
func CompileJQ(src string) (*JQ, error) {
	if j, ok := compiled.Load(src); ok {
		return j.(*JQ), nil
	}
	j, err := compileJQ(src)
	if err != nil {
		return nil, err
	}
	if compiledN.Add(1) <= maxCompiled {
		compiled.Store(src, j)
	}
	return j, nil
}

const maxCompiled = 1024

var (
	compiled  sync.Map // source → *JQ
	compiledN atomic.Int64
)

func compileJQ(src string) (*JQ, error) {
	q, err := gojq.Parse(src)
	if err != nil {
		return nil, fmt.Errorf("invalid jq: %w", err)
	}
	code, err := gojq.Compile(q, gojq.WithVariables([]string{"$export"}))
	if err != nil {
		return nil, fmt.Errorf("invalid jq: %w", err)
	}
	return &JQ{src: src, code: code}, nil
}

// String returns the program's source.
func (j *JQ) String() string { return j.src }

// Run returns every value the program yields for input. A jq error stops it.
func (j *JQ) Run(ctx context.Context, input any, export map[string]any) ([]any, error) {
	var out []any
	iter := j.code.RunWithContext(ctx, input, export)
	for {
		v, ok := iter.Next()
		if !ok {
			return out, nil
		}
		if err, isErr := v.(error); isErr {
			var halt *gojq.HaltError
			if errors.As(err, &halt) && halt.Value() == nil {
				return out, nil
			}
			return out, fmt.Errorf("jq: %w", err)
		}
		out = append(out, v)
	}
}

// One runs the program and requires exactly one value.
func (j *JQ) One(ctx context.Context, input any, export map[string]any) (any, error) {
	vs, err := j.Run(ctx, input, export)
	if err != nil {
		return nil, err
	}
	if len(vs) != 1 {
		return nil, fmt.Errorf("jq: program yielded %d values, want exactly 1", len(vs))
	}
	return vs[0], nil
}

// Bool runs the program as a predicate: its first value's truthiness (jq's:
// everything but false and null is true). No value is false.
func (j *JQ) Bool(ctx context.Context, input any, export map[string]any) (bool, error) {
	vs, err := j.Run(ctx, input, export)
	if err != nil {
		return false, err
	}
	if len(vs) == 0 {
		return false, nil
	}
	return vs[0] != nil && vs[0] != false, nil
}

// JSON runs the program and encodes each value as JSON. gojq's own
// encoder writes jq values without reflection and, like jq, leaves &, <
// and > unescaped, so URLs in a vendor body arrive as written.
func (j *JQ) JSON(ctx context.Context, input any, export map[string]any) ([][]byte, error) {
	vs, err := j.Run(ctx, input, export)
	if err != nil {
		return nil, err
	}
	out := make([][]byte, len(vs))
	for i, v := range vs {
		out[i], _ = gojq.Marshal(v) // never fails: jq only yields JSON values
	}
	return out, nil
}
