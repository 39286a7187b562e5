// Package pipeline is labelpipe's core: the contracts a stage, a sink and a
// backend implement, the registry that holds their types, the config
// loader, and the engine that runs an export from the webhook to every
// vendor. It imports no stage, sink or backend implementation; package
// builtin registers labelpipe's own.
//
// # The path of one export
//
// Each step is one file, in the order the data flows:
//
//	webhook.go   POST /webhook: method, Content-Type, body size and budget; the answer
//	ingress.go   the stages, in config order, on one Export; decode the body once
//	publish.go   the durable publish to the exports topic (202 only after it)
//	fanout.go    one message per request of every sink that wants the export
//	deliver.go   one request: delivery record, resilience policy, attempts
//	dlq.go       a request a sink gave up on; replay
//	preview.go   the same stages and renders, with no side effect
//	admin.go     /healthz, /readyz, /metrics, /api/sinks, /api/dlq
//	admin_guard.go  who may call admin.go: Host, cross-origin, bearer token
//
// pipeline.go assembles the parts and runs them (New, Run, Close);
// backends.go opens the backends the config names.
//
// # Contracts
//
// A Stage gets one *Export and returns nil to pass it, or an error built
// with Drop, Reject, Invalid, Duplicate or Unavailable that decides the
// webhook's answer (see Verdict). A RawStage runs before the body is
// decoded; a Releaser gives back what it reserved when the export is not
// accepted after all; a Previewer answers a preview without side effects.
//
// A Sink renders an export's payload into request bodies (one per value its
// jq program yields) and sends one Request per attempt, failing with a
// *DeliveryError that says whether to retry. The core wraps every sink in
// the same resilience policy (package resilience): rate limit, circuit
// breaker, retries.
//
// A backend (package backend) provides the broker, the DLQ, the delivery
// ledger, the dedupe store and the shared breaker store of one storage
// technology. The engine never asks which kind it has.
//
// # Registries and config
//
// A Registry is a value: stage, sink and backend types are registered by
// name (NewStageType, NewSinkType, BackendType), each with a typed config
// struct whose fields carry their YAML keys and docs. Those structs are the
// one source of truth for the config; the loader decodes them strictly and
// reports every error with file:line:col.
package pipeline
