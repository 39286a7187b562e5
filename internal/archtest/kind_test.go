package archtest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The engine (package pipeline, without its tests) never asks which broker
// it has.
func TestEngineNeverAsksWhichBroker(t *testing.T) {
	files, err := filepath.Glob("../../pipeline/*.go")
	if err != nil || len(files) == 0 {
		t.Fatalf("no engine sources found: %v", err)
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		found, err := BrokerKindBranches(f, src)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range found {
			t.Errorf("the engine branches on the broker kind: %s", b)
		}
	}
}

// The check catches each way of asking, and leaves defaults alone.
func TestBrokerKindBranches(t *testing.T) {
	for _, tt := range []struct {
		name string
		src  string
		want int
	}{
		{"kind comparison", `if p.cfg.Broker.Type == "redis" { x() }`, 1},
		{"kind inequality", `if "memory" != kind { x() }`, 1},
		{"switch on kind", `switch k { case "memory", "redis": x() }`, 2},
		{"Durable call", `if !p.broker.Durable() { x() }`, 1},
		{"Durable field", `if p.broker.Info().Durable { x() }`, 1},
		{"Durable compared", `ok := b.Durable() == false; _ = ok`, 1},
		{"a default is not a branch", `c := Config{Type: "memory"}; _ = c`, 0},
		{"logging durability is not a branch", `log("durable", info.Durable)`, 0},
		{"other strings", `if s == "http" { x() }`, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			src := "package p\nfunc f() {\n" + tt.src + "\n}\n"
			got, err := BrokerKindBranches("f.go", []byte(src))
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != tt.want {
				t.Fatalf("found %d branches %v, want %d", len(got), got, tt.want)
			}
		})
	}
}
