// Package archtest holds the architecture test: it checks the import rules
// of labelpipe's package layout against the dependency graph the go command
// reports (go list -deps, non-test imports only, so every edge is
// transitive).
//
// The layout:
//
//   - The core ("the engine") is pipeline and its subpackages
//     pipeline/backend (the backend contracts), pipeline/resilience,
//     pipeline/field and anything under pipeline/internal.
//   - Backend implementations are pipeline/backend/memory and
//     pipeline/backend/redis; pipeline/backend/backendtest is their
//     conformance suite. Daemon-side telemetry wiring is pipeline/telemetry.
//   - builtin registers the built-in stages, sinks and backends; stages and
//     sinks (with their subpackages) hold the stage and sink types.
//   - cmd/labelpipe is the CLI; internal/... is the test kit.
//
// The rules:
//
//  1. The core imports no labelpipe package outside the core.
//  2. stages and sinks never import each other.
//  3. Nothing imports cmd/... (except inside one command's own tree).
//  4. A package that only implements a stage or a sink, and the core it
//     builds on, pull in none of gRPC, the OpenTelemetry exporters, the
//     Prometheus client, the Redis-streams broker or net/http/pprof: a
//     plugin must stay cheap to build and to link.
//  5. The engine (package pipeline) never asks which broker it has: no
//     comparison or switch on a backend kind's name, no branch on
//     Durable (kind.go, checked on the source).
//
// The rules are plain functions over a [Graph] in arch.go, so they can be
// unit-tested on a synthetic graph. The tests run them on the real tree, on
// a stage-only plugin fixture (testdata/stageplugin) and on a fixture that
// breaks rule 4 on purpose (testdata/badplugin), to show the test can fail.
// A package a rule names that does not exist (yet) is simply absent from
// the graph and has no dependencies.
package archtest
