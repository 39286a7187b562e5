package pipeline

import (
	"fmt"
	"log/slog"
	"maps"
	"regexp"
	"slices"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// Env is what a stage or sink gets when it is built: its name, its own
// logger and the injected telemetry and clients. It never reaches for
// globals.
type Env struct {
	// Name is the configured name of the stage or sink.
	Name string
	// Logger is already tagged with "stage" or "sink" and the name.
	Logger *slog.Logger
	// TracerProvider and MeterProvider are the injected telemetry.
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
	// Redis is the shared client when Redis is configured, else nil.
	Redis redis.UniversalClient
	// ConfigDir is the directory of the config file, for relative paths.
	ConfigDir string
	// Offline is set when the pipeline is built for a preview: nothing
	// outside the process may be touched (Redis is nil then), so a stage
	// that keeps shared state uses a private, empty one instead.
	Offline bool
}

// Validator is implemented by config structs. Validate is pure (no I/O) and
// reports every problem it finds, each as a FieldError where it can name
// the field, joined with errors.Join.
type Validator interface {
	Validate() error
}

// StageType is a registered stage type.
type StageType struct {
	// Doc is one line saying what the stage does.
	Doc string
	// Config returns a fresh config value (a pointer) with defaults set;
	// the loader decodes the stage's YAML options into it strictly.
	Config func() any
	// Build makes the stage from its decoded and validated config.
	Build func(cfg any, env Env) (Stage, error)
}

// SinkType is a registered sink type.
type SinkType struct {
	Doc    string
	Config func() any
	Build  func(cfg any, env Env) (Sink, error)
}

// NewStageType ties a typed config and build function into a StageType.
func NewStageType[C any](doc string, defaults func() *C, build func(*C, Env) (Stage, error)) StageType {
	return StageType{
		Doc:    doc,
		Config: func() any { return defaults() },
		Build:  func(cfg any, env Env) (Stage, error) { return build(cfg.(*C), env) },
	}
}

// NewSinkType ties a typed config and build function into a SinkType.
func NewSinkType[C any](doc string, defaults func() *C, build func(*C, Env) (Sink, error)) SinkType {
	return SinkType{
		Doc:    doc,
		Config: func() any { return defaults() },
		Build:  func(cfg any, env Env) (Sink, error) { return build(cfg.(*C), env) },
	}
}

// Registry holds the stage and sink types a pipeline can be built from. It
// is a value: embedders and tests each get their own.
type Registry struct {
	stages map[string]StageType
	sinks  map[string]SinkType
}

// NewRegistry returns an empty registry. Built-in types are added by
// builtin.Register (package pipeline/builtin).
func NewRegistry() *Registry {
	return &Registry{stages: map[string]StageType{}, sinks: map[string]SinkType{}}
}

var typeName = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)

// RegisterStage adds a stage type. An empty, non-snake_case or duplicate
// name is a programming error and panics.
func (r *Registry) RegisterStage(name string, t StageType) {
	checkTypeName(name, t.Config == nil || t.Build == nil)
	if _, dup := r.stages[name]; dup {
		panic(fmt.Sprintf("pipeline: stage type %q registered twice", name))
	}
	r.stages[name] = t
}

// RegisterSink adds a sink type, with the same rules as RegisterStage.
func (r *Registry) RegisterSink(name string, t SinkType) {
	checkTypeName(name, t.Config == nil || t.Build == nil)
	if _, dup := r.sinks[name]; dup {
		panic(fmt.Sprintf("pipeline: sink type %q registered twice", name))
	}
	r.sinks[name] = t
}

func checkTypeName(name string, incomplete bool) {
	if !typeName.MatchString(name) {
		panic(fmt.Sprintf("pipeline: type name %q is not snake_case", name))
	}
	if incomplete {
		panic(fmt.Sprintf("pipeline: type %q needs Config and Build", name))
	}
}

// Stage looks up a stage type.
func (r *Registry) Stage(name string) (StageType, bool) { t, ok := r.stages[name]; return t, ok }

// Sink looks up a sink type.
func (r *Registry) Sink(name string) (SinkType, bool) { t, ok := r.sinks[name]; return t, ok }

// StageTypes lists the registered stage type names, sorted.
func (r *Registry) StageTypes() []string { return slices.Sorted(maps.Keys(r.stages)) }

// SinkTypes lists the registered sink type names, sorted.
func (r *Registry) SinkTypes() []string { return slices.Sorted(maps.Keys(r.sinks)) }
