package pipeline

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

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

// Run returns every value the program yields for input. A jq error stops
// it, and so does a limit of the JQLimits in ctx (WithJQLimits), or of the
// defaults: the error is a *JQLimitError naming the limit.
func (j *JQ) Run(ctx context.Context, input any, export map[string]any) ([]any, error) {
	return j.run(ctx, jqLimitsFrom(ctx), input, export)
}

// run is Run under lim, read once by its callers.
func (j *JQ) run(ctx context.Context, lim JQLimits, input any, export map[string]any) ([]any, error) {
	run := ctx
	if lim.MaxMemory > 0 {
		var cancel context.CancelCauseFunc
		run, cancel = context.WithCancelCause(run)
		defer cancel(nil)
		defer heapGuard.watch(uint64(lim.MaxMemory), cancel)()
	}
	if lim.Timeout > 0 {
		var cancel context.CancelFunc
		run, cancel = context.WithTimeout(run, lim.Timeout)
		defer cancel()
	}
	var out []any
	iter := j.code.RunWithContext(run, input, export)
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
			if ctx.Err() == nil && run.Err() != nil {
				if errors.Is(context.Cause(run), errHeapGrowth) {
					return out, &JQLimitError{Limit: "jq.max_memory", Msg: fmt.Sprintf("grew the heap by more than %d MiB", lim.MaxMemory>>20)}
				}
				return out, &JQLimitError{Limit: "jq.timeout", Msg: fmt.Sprintf("ran longer than %s", lim.Timeout)}
			}
			return out, fmt.Errorf("jq: %w", err)
		}
		if lim.MaxOutputs > 0 && len(out) == lim.MaxOutputs {
			return out, &JQLimitError{Limit: "jq.max_outputs", Msg: fmt.Sprintf("yielded more than %d values", lim.MaxOutputs)}
		}
		out = append(out, v)
	}
}

// JQLimits bound one run of a jq program, so that a program whose cost
// grows with the payload cannot take the daemon down with it.
type JQLimits struct {
	// Timeout bounds one run; default 5s. It cannot bound one huge
	// allocation, such as "x" * 1e9, which happens in one step.
	Timeout time.Duration `yaml:"timeout"`
	// MaxOutputs bounds the values one run yields (a sink's requests for
	// one export, for example); default 100000.
	MaxOutputs int `yaml:"max_outputs"`
	// MaxOutputBytes bounds the encoded size of a sink's bodies for one
	// export, checked as each is encoded; default 256 MiB.
	MaxOutputBytes int64 `yaml:"max_output_bytes"`
	// MaxMemory bounds how much the process's heap may grow while a run
	// is under way, checked every few milliseconds; default 192 MiB, 0
	// for no bound. Go cannot tell whose allocation grew the shared heap,
	// so every run under way when it is exceeded is stopped. Raise it
	// when programs legitimately build values several times the size of
	// server.max_body_bytes.
	MaxMemory int64 `yaml:"max_memory"`
}

// DefaultJQLimits are the limits a run gets when its context has none.
func DefaultJQLimits() JQLimits {
	return JQLimits{Timeout: 5 * time.Second, MaxOutputs: 100_000, MaxOutputBytes: 256 << 20, MaxMemory: 192 << 20}
}

type jqLimitsKey struct{}

// WithJQLimits makes every jq run under ctx use l.
func WithJQLimits(ctx context.Context, l JQLimits) context.Context {
	return context.WithValue(ctx, jqLimitsKey{}, l)
}

func jqLimitsFrom(ctx context.Context) JQLimits {
	if l, ok := ctx.Value(jqLimitsKey{}).(JQLimits); ok {
		return l
	}
	return DefaultJQLimits()
}

// JQLimitError is a jq run stopped by one of its limits.
type JQLimitError struct {
	// Limit is the config key of the limit, e.g. "jq.timeout".
	Limit string
	// Msg says what the program did.
	Msg string
}

func (e *JQLimitError) Error() string {
	return "jq: the program " + e.Msg + " (limit " + e.Limit + ")"
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
	lim := jqLimitsFrom(ctx)
	vs, err := j.run(ctx, lim, input, export)
	if err != nil {
		return nil, err
	}
	var size int64
	out := make([][]byte, len(vs))
	for i, v := range vs {
		out[i], _ = gojq.Marshal(v) // never fails: jq only yields JSON values
		if size += int64(len(out[i])); lim.MaxOutputBytes > 0 && size > lim.MaxOutputBytes {
			return out[:i], &JQLimitError{Limit: "jq.max_output_bytes", Msg: fmt.Sprintf("yielded more than %d bytes of JSON", lim.MaxOutputBytes)}
		}
	}
	return out, nil
}
