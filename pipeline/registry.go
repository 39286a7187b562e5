package pipeline

import (
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/labelpipe/labelpipe/pipeline/backend"
	"github.com/labelpipe/labelpipe/pipeline/resilience"
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
	// DedupeStore opens a dedupe store on the backend of the given kind
	// (memory, redis, or a registered one), keeping keys under prefix,
	// provisionally for hold and for ttl once confirmed (see
	// backend.DedupeStore). In a preview it is a private, empty in-process store whatever
	// the kind. It is nil for stages built outside a pipeline (tests set
	// it themselves).
	DedupeStore func(kind, prefix string, ttl, hold time.Duration) (backend.DedupeStore, error)
	// ConfigDir is the directory of the config file, for relative paths.
	ConfigDir string
	// Offline is set when the pipeline is built for a preview: nothing
	// outside the process may be touched.
	Offline bool
	// files notes what ReadFile read, for the reload; nil outside a
	// pipeline.
	files *fileLog
}

// ReadFile reads the file p names (a path from the config, see Path).
// Stages and sinks read their files (a schema, a key) through it: a
// reload rebuilds the stage or sink when such a file changed even though
// its config did not.
func (e Env) ReadFile(p string) ([]byte, error) {
	p = e.Path(p)
	b, err := os.ReadFile(p)
	if err == nil && e.files != nil {
		e.files.note(p, b)
	}
	return b, err
}

// fileLog is the content fingerprint of each file a stage or sink read
// when it was built.
type fileLog struct {
	mu   sync.Mutex
	sums map[string][sha256.Size]byte
}

func (l *fileLog) note(path string, b []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.sums == nil {
		l.sums = map[string][sha256.Size]byte{}
	}
	l.sums[path] = sha256.Sum256(b)
}

// changed names a file read at build time whose content is not the same
// now (or that cannot be read any more); "" when none.
func (l *fileLog) changed() string {
	if l == nil {
		return ""
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, path := range slices.Sorted(maps.Keys(l.sums)) {
		b, err := os.ReadFile(path)
		if err != nil || sha256.Sum256(b) != l.sums[path] {
			return path
		}
	}
	return ""
}

// Path is p from the config: relative to the config file's directory
// unless absolute.
func (e Env) Path(p string) string { return configPath(e.ConfigDir, p) }

func configPath(dir, p string) string {
	if p == "" || dir == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(dir, p)
}

// KeyKeeper is implemented by the config of a stage that keeps keys
// promising that an export was stored (dedupe). KeyStore names the backend
// kind that keeps them, KeyHold how long a key is held before its export
// is on the broker. When the config is loaded, a kind that outlives the
// process (not InProcess) paired with an in-process broker is refused
// (after a crash it would answer "duplicate" for exports the broker lost),
// and so is, with an in-process broker, a hold no longer than
// broker.queue_wait (a request waiting for room would lose its hold to
// its own retry).
type KeyKeeper interface {
	KeyStore() string
	KeyHold() time.Duration
}

// Validator is implemented by config structs. Validate is pure (no I/O) and
// reports every problem it finds, each as a FieldError where it can name
// the field, joined with errors.Join.
type Validator interface {
	Validate() error
}

// RateLimitDefaulter is implemented by the config of a sink type that
// ships a default rate limit: a vendor preset's documented limit. It is
// the sink's rate_limit when its entry has no rate_limit key.
type RateLimitDefaulter interface {
	DefaultRateLimit() resilience.RateLimit
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

// BackendType is a registered backend kind: the broker, DLQ, ledger, dedupe
// store and breaker store of one storage technology.
type BackendType struct {
	// Doc is one line saying what the backend is.
	Doc string
	// InProcess says the backend keeps everything in this process. A
	// preview, which touches nothing outside the process, uses an
	// in-process backend in place of every other kind.
	InProcess bool
	// Configured reports whether a config gives the backend what it needs
	// (the redis backend needs redis.url); nil means always. A pipeline
	// opens every configured backend, and broker.type must name one.
	Configured func(cfg *Config) bool
	// Needs says what Configured looks for, for the error when something
	// uses the backend without it (for example "redis.url").
	Needs string
	// Open opens the backend. It makes no network call that could fail
	// the start: a backend that is down makes the pipeline not ready, not
	// unable to start.
	Open func(ctx context.Context, env BackendEnv) (backend.Backend, error)
}

// BackendEnv is what a backend gets when it is opened.
type BackendEnv struct {
	// Config is the whole pipeline config; backends read broker and redis.
	Config *Config
	// Logger is tagged with the backend's kind.
	Logger *slog.Logger
	// Watermill is Logger bridged for watermill's publishers and
	// subscribers.
	Watermill watermill.LoggerAdapter
	// TracerProvider and MeterProvider are the injected telemetry.
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
	// ReplicaID names this process among replicas sharing a backend.
	ReplicaID string
}

// Registry holds the stage, sink and backend types a pipeline can be built
// from. It is a value: embedders and tests each get their own.
type Registry struct {
	stages   map[string]StageType
	sinks    map[string]SinkType
	backends map[string]BackendType
}

// NewRegistry returns an empty registry. Package builtin returns one with
// labelpipe's own types.
func NewRegistry() *Registry {
	return &Registry{stages: map[string]StageType{}, sinks: map[string]SinkType{}, backends: map[string]BackendType{}}
}

// RegisterBackend adds a backend kind, with the same rules as
// RegisterStage.
func (r *Registry) RegisterBackend(name string, t BackendType) {
	checkTypeName(name, t.Open == nil)
	if _, dup := r.backends[name]; dup {
		panic(fmt.Sprintf("pipeline: backend %q registered twice", name))
	}
	r.backends[name] = t
}

// Backend looks up a backend kind.
func (r *Registry) Backend(name string) (BackendType, bool) { t, ok := r.backends[name]; return t, ok }

// BackendTypes lists the registered backend kinds, sorted.
func (r *Registry) BackendTypes() []string { return slices.Sorted(maps.Keys(r.backends)) }

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
		panic(fmt.Sprintf("pipeline: type %q is incomplete (a stage or sink needs Config and Build, a backend Open)", name))
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
