package sinks_test

import (
	"strings"
	"testing"

	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/pipeline/backend/memory"
	"github.com/labelpipe/labelpipe/sinks"
)

func registry() *pipeline.Registry {
	r := pipeline.NewRegistry()
	sinks.Register(r)
	r.RegisterBackend(memory.Kind, memory.Type) // the config's default broker
	return r
}

func TestRegisterTypes(t *testing.T) {
	r := registry()
	if got := strings.Join(r.SinkTypes(), ","); got != "cvat,file,graphql,http,label_studio,labelbox,scale" {
		t.Fatalf("sink types %s", got)
	}
}

func TestConfigDecodesAndBuilds(t *testing.T) {
	t.Setenv("SCALE_API_KEY", "live_key")
	yaml := `
sinks:
  - name: scale
    type: http
    url: https://api.scale.com/v1/task/imageannotation
    basic_auth: {username: "${SCALE_API_KEY}"}
    conflict_is_success: true
    idempotency_header: Idempotency-Key
    success_status: [200, 201]
    body: '.issue.elements[] | {unique_id: .element_id}'
  - name: labelbox
    type: graphql
    url: https://api.labelbox.com/graphql
    headers: {Authorization: "Bearer k"}
    query: 'mutation { x }'
    already_done: already exists
  - name: audit
    type: file
    path: out/audit.jsonl
    envelope: true
`
	cfg, err := pipeline.ParseConfig(t.TempDir()+"/pipeline.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	r := registry()
	if err := cfg.Resolve(r); err != nil {
		t.Fatal(err)
	}
	hc := cfg.Sinks[0].Options.(*sinks.HTTPConfig)
	if hc.Method != "POST" || hc.BasicAuth.Username != "live_key" || !hc.ConflictIsSuccess || len(hc.SuccessStatus) != 2 {
		t.Fatalf("http options %+v", hc)
	}
	gc := cfg.Sinks[1].Options.(*sinks.GraphQLConfig)
	if gc.Variables != "{}" || gc.AlreadyDone != "already exists" {
		t.Fatalf("graphql options %+v", gc)
	}
	for _, sc := range cfg.Sinks {
		st, _ := r.Sink(sc.Type)
		s, err := st.Build(sc.Options, pipeline.Env{Name: sc.Name, ConfigDir: cfg.Dir()})
		if err != nil {
			t.Fatalf("build %s: %v", sc.Name, err)
		}
		if c, ok := s.(pipeline.Closer); ok {
			_ = c.Close()
		}
	}
}

func TestConfigErrorsArePositioned(t *testing.T) {
	yaml := `sinks:
  - name: scale
    type: http
    url: /relative
    bodyy: .
  - name: labelbox
    type: graphql
    url: https://api.labelbox.com/graphql
    variables: '{'
  - name: audit
    type: file
  - name: studio
    type: http
    url: /relative
`
	cfg, err := pipeline.ParseConfig("pipeline.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	err = cfg.Resolve(registry())
	if err == nil {
		t.Fatal("Resolve accepted a broken config")
	}
	for _, want := range []string{
		`pipeline.yaml:5:`, // unknown key bodyy
		`pipeline.yaml:14:10: sinks[3] "studio": url: must be an absolute`,
		`sinks[1] "labelbox": query: is required`,
		`pipeline.yaml:9:16: sinks[1] "labelbox": variables: invalid jq`,
		`sinks[2] "audit": path: is required`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("errors do not contain %q:\n%v", want, err)
		}
	}
}
