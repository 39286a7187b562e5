package testutil

import (
	"io/fs"
	"testing"

	"github.com/labelpipe/labelpipe/configs"
)

// SamplePayloads returns every sample webhook body in configs/payloads,
// e.g. as fuzz seeds.
func SamplePayloads(tb testing.TB) [][]byte {
	tb.Helper()
	names, err := fs.Glob(configs.Payloads, "payloads/*.json")
	if err != nil || len(names) == 0 {
		tb.Fatalf("no sample payloads: %v", err)
	}
	out := make([][]byte, 0, len(names))
	for _, name := range names {
		b, err := configs.Payloads.ReadFile(name)
		if err != nil {
			tb.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}
