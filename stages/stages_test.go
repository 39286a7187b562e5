package stages_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/goccy/go-yaml"

	"github.com/labelpipe/labelpipe/configs"
	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/pipeline/backend"
	"github.com/labelpipe/labelpipe/pipeline/backend/memory"
	redisb "github.com/labelpipe/labelpipe/pipeline/backend/redis"
	"github.com/labelpipe/labelpipe/stages"
)

// registry holds only the built-in stages (and a no-op sink so whole
// configs can be loaded).
func registry() *pipeline.Registry {
	r := pipeline.NewRegistry()
	stages.Register(r)
	r.RegisterSink("nop", pipeline.NewSinkType("does nothing", func() *struct{} { return &struct{}{} },
		func(*struct{}, pipeline.Env) (pipeline.Sink, error) { return nopSink{}, nil }))
	r.RegisterBackend(memory.Kind, memory.Type) // the config's default broker
	return r
}

type nopSink struct{}

func (nopSink) Render(context.Context, any, map[string]any) ([][]byte, error) { return nil, nil }
func (nopSink) Send(context.Context, *pipeline.Request) error                 { return nil }

// decode decodes a stage's YAML options strictly into its default config,
// as the loader does, and returns the config's Validate error.
func decode(t *testing.T, typ, opts string) (any, error) {
	t.Helper()
	st, ok := registry().Stage(typ)
	if !ok {
		t.Fatalf("stage type %q is not registered", typ)
	}
	cfg := st.Config()
	if strings.TrimSpace(opts) != "" {
		if err := yaml.UnmarshalWithOptions([]byte(opts), cfg, yaml.Strict()); err != nil {
			t.Fatalf("decode %s options: %v", typ, err)
		}
	}
	v, ok := cfg.(pipeline.Validator)
	if !ok {
		t.Fatalf("%s config %T has no Validate", typ, cfg)
	}
	return cfg, v.Validate()
}

// build builds a stage from YAML options; the config must be valid. An Env
// without a DedupeStore gets redisEnv(nil)'s: memory stores, and no redis.
func build(t *testing.T, typ, opts string, env pipeline.Env) (pipeline.Stage, error) {
	t.Helper()
	cfg, err := decode(t, typ, opts)
	if err != nil {
		t.Fatalf("%s config is invalid: %v", typ, err)
	}
	if env.Name == "" {
		env.Name = typ
	}
	if env.Logger == nil {
		env.Logger = slog.New(slog.DiscardHandler)
	}
	if env.DedupeStore == nil {
		env.DedupeStore = redisEnv(nil).DedupeStore
	}
	st, _ := registry().Stage(typ)
	return st.Build(cfg, env)
}

// mustBuild is build for configs that must also build.
func mustBuild(t *testing.T, typ, opts string, env pipeline.Env) pipeline.Stage {
	t.Helper()
	s, err := build(t, typ, opts, env)
	if err != nil {
		t.Fatalf("build %s: %v", typ, err)
	}
	return s
}

// fieldErrors lists "field: message" for each FieldError in a Validate
// error, and fails on anything else.
func fieldErrors(t *testing.T, err error) []string {
	t.Helper()
	var out []string
	var walk func(error)
	walk = func(err error) {
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
			return
		}
		var fe *pipeline.FieldError
		if !errors.As(err, &fe) {
			t.Fatalf("validation error %q is not a *pipeline.FieldError", err)
		}
		out = append(out, fe.Field+": "+fe.Msg)
	}
	if err != nil {
		walk(err)
	}
	return out
}

var exportSeq atomic.Int64

// newExport makes an export the way the HTTP source does: raw body and the
// decoded payload (numbers as float64).
func newExport(t *testing.T, body []byte, header http.Header) *pipeline.Export {
	t.Helper()
	var payload any
	if err := json.Unmarshal(body, &payload); err != nil {
		t.Fatalf("test payload is not JSON: %v", err)
	}
	if header == nil {
		header = http.Header{}
	}
	return &pipeline.Export{
		ID:         fmt.Sprintf("exp-%d", exportSeq.Add(1)),
		ReceivedAt: time.Now(),
		Header:     header,
		Body:       body,
		Payload:    payload,
	}
}

// samplePayload reads configs/payloads/<name>.
func samplePayload(t *testing.T, name string) []byte {
	t.Helper()
	b, err := configs.Payloads.ReadFile("payloads/" + name)
	if err != nil {
		t.Fatalf("read sample payload: %v", err)
	}
	return b
}

// mutate applies a jq program to a JSON document and returns the result.
func mutate(t *testing.T, body []byte, expr string) []byte {
	t.Helper()
	prog, err := pipeline.CompileJQ(expr)
	if err != nil {
		t.Fatalf("mutation %q: %v", expr, err)
	}
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatal(err)
	}
	out, err := prog.One(t.Context(), v, map[string]any{})
	if err != nil {
		t.Fatalf("mutation %q: %v", expr, err)
	}
	b, err := json.Marshal(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// stageErr returns err as a *StageError, failing if it is not one.
func stageErr(t *testing.T, err error) *pipeline.StageError {
	t.Helper()
	se, ok := pipeline.AsStageError(err)
	if !ok {
		t.Fatalf("error %v (%T) is not a *pipeline.StageError", err, err)
	}
	return se
}

// passed fails unless the stage passed e on.
func passed(t *testing.T, e *pipeline.Export, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("Process error = %v, want export %s passed on", err, e.ID)
	}
}

// redisEnv is an Env whose dedupe stores are kept in rdb for store: redis,
// and in memory for store: memory, as a pipeline's backends give them. A
// nil rdb is a pipeline without redis.url.
func redisEnv(rdb goredis.UniversalClient) pipeline.Env {
	return pipeline.Env{DedupeStore: func(kind, prefix string, ttl, hold time.Duration) (backend.DedupeStore, error) {
		switch {
		case kind == "memory":
			return memory.NewDedupeStore(ttl, hold), nil
		case kind == "redis" && rdb != nil:
			return redisb.NewDedupeStore(rdb, prefix, ttl, hold), nil
		case kind == "redis":
			return nil, errors.New("backend redis needs redis.url in the config")
		}
		return nil, fmt.Errorf("unknown backend %q", kind)
	}}
}

func TestRegisterAddsEveryStage(t *testing.T) {
	got := registry().StageTypes()
	want := []string{"dedupe", "filter", "rate_limit", "schema", "secret", "transform"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("StageTypes() = %v, want %v", got, want)
	}
}

func TestDefaultsValidate(t *testing.T) {
	tests := []struct {
		typ  string
		want []string // field errors of the bare defaults
	}{
		{"secret", []string{"secrets: at least one secret is required (secrets or secrets_file)"}},
		{"schema", nil},
		{"dedupe", nil},
		{"filter", []string{`expr: is required (a jq predicate, e.g. '.event == "issue-exported"')`}},
		{"transform", []string{`expr: is required (a jq program yielding the new payload, e.g. 'del(.issue.elements[].frame_data.custom_metrics)')`}},
	}
	for _, tt := range tests {
		t.Run(tt.typ, func(t *testing.T) {
			_, err := decode(t, tt.typ, "")
			got := fieldErrors(t, err)
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Fatalf("Validate() of defaults = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestConfigErrorsPointAtFields loads whole configs, so stage field errors
// come back with the file position and the path of the field.
func TestConfigErrorsPointAtFields(t *testing.T) {
	tests := []struct {
		name   string
		stages string
		want   []string
	}{
		{
			name: "empty secret from an unset variable",
			stages: `
  - type: secret
    secrets: ["${LABELPIPE_H1_TEST_UNSET:-}", "s2"]`,
			want: []string{`pipeline.yaml:3:15: stages[0] "secret": secrets[0]: is empty (is the environment variable set?)`},
		},
		{
			name: "bad jq in a filter",
			stages: `
  - type: filter
    name: only_demo
    expr: '.project =='`,
			want: []string{`pipeline.yaml:4:11: stages[0] "only_demo": expr: invalid jq:`},
		},
		{
			name: "bad dedupe store and policy",
			stages: `
  - type: dedupe
    store: postgres
    on_store_error: ignore`,
			want: []string{
				`pipeline.yaml:3:12: stages[0] "dedupe": store: unknown store "postgres" (want memory or redis)`,
				`pipeline.yaml:4:21: stages[0] "dedupe": on_store_error: unknown policy "ignore" (want reject or allow)`,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc := "stages:" + tt.stages + "\nsinks:\n  - name: n\n    type: nop\n"
			cfg, err := pipeline.ParseConfig("pipeline.yaml", []byte(doc))
			if err != nil {
				t.Fatalf("ParseConfig: %v", err)
			}
			err = cfg.Resolve(registry())
			if err == nil {
				t.Fatal("Resolve() = nil, want errors")
			}
			lines := strings.Split(err.Error(), "\n")
			if len(lines) != len(tt.want) {
				t.Fatalf("Resolve() errors:\n%s\nwant %d", err, len(tt.want))
			}
			for i, w := range tt.want {
				if !strings.HasPrefix(lines[i], w) {
					t.Errorf("error %d = %q, want prefix %q", i, lines[i], w)
				}
			}
			if strings.Contains(err.Error(), "s2") {
				t.Errorf("config error leaks a secret: %s", err)
			}
		})
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestOnlySecretIsRaw: the secret stage runs before the body is parsed;
// every other stage needs the payload.
func TestOnlySecretIsRaw(t *testing.T) {
	opts := map[string]string{
		"secret":    "secrets: [x]",
		"schema":    "",
		"dedupe":    "",
		"filter":    "expr: .",
		"transform": "expr: .",
	}
	for typ, o := range opts {
		s := mustBuild(t, typ, o, pipeline.Env{})
		if _, raw := s.(pipeline.RawStage); raw != (typ == "secret") {
			t.Errorf("%s: RawStage = %v", typ, raw)
		}
	}
}
