// Package e2e holds end-to-end tests that run labelpipe in-process through
// its public API against real external components: a real Jaeger
// (internal/jaegertest) and instrumented fake vendors. Run them alone with
//
//	go tool task e2e:jaeger
//
// or `go test -race -count=1 -run Jaeger ./internal/e2e/...`. The first run
// builds Jaeger (several minutes) into the labelpipe cache; later runs take
// seconds.
package e2e
