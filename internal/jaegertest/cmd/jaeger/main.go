//go:build unix

// Command jaeger runs the Jaeger that the tests build from source
// (jaegertest.Version, cached in jaegertest.CacheDir, built on first use)
// on Jaeger's standard ports, with in-memory storage, in the foreground:
//
//	go tool task jaeger            # or: go run ./internal/jaegertest/cmd/jaeger
//
// OTLP comes in on 4317 (gRPC) and 4318 (HTTP); the query API answers on
// 16686, where `labelpipe trace ID` reads it. This build serves no UI (the
// UI's assets are not part of a source build): use an official Jaeger
// all-in-one release or container for that. Ctrl-C stops it; the process
// becomes Jaeger itself (exec), so signals reach it directly.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"path/filepath"
	"syscall"

	"github.com/labelpipe/labelpipe/internal/jaegertest"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("jaeger: ")
	otlpGRPC := flag.String("otlp-grpc", "127.0.0.1:4317", "OTLP/gRPC receiver address")
	otlpHTTP := flag.String("otlp-http", "127.0.0.1:4318", "OTLP/HTTP receiver address")
	query := flag.String("query", "127.0.0.1:16686", "query API (HTTP) address")
	queryGRPC := flag.String("query-grpc", "127.0.0.1:16685", "query API (gRPC) address")
	flag.Parse()
	if flag.NArg() > 0 {
		log.Fatalf("unexpected argument %q", flag.Arg(0))
	}
	for _, addr := range []string{*otlpGRPC, *otlpHTTP, *query, *queryGRPC} {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			log.Fatalf("%s is taken (%v): is a Jaeger already running? Choose other ports with -otlp-grpc, -otlp-http, -query, -query-grpc", addr, err)
		}
		_ = l.Close()
	}
	bin, err := jaegertest.Build(log.Printf)
	if err != nil {
		log.Fatal(err)
	}
	dir, err := jaegertest.CacheDir()
	if err != nil {
		log.Fatal(err)
	}
	cfg := filepath.Join(dir, "jaeger-local.yaml")
	if err := os.WriteFile(cfg, []byte(jaegertest.Config(*otlpGRPC, *otlpHTTP, *query, *queryGRPC)), 0o644); err != nil {
		log.Fatal(err)
	}
	fmt.Fprintf(os.Stderr, `Jaeger %s (built from source, in-memory storage)
  OTLP gRPC  %s     tracing: {exporter: otlp, endpoint: "http://%[2]s"}
  OTLP HTTP  %s
  query API  http://%s  (no UI in this build: labelpipe trace ID reads it)
Ctrl-C stops it.
`, jaegertest.Version, *otlpGRPC, *otlpHTTP, *query)
	if err := syscall.Exec(bin, []string{bin, "--config", cfg}, os.Environ()); err != nil {
		log.Fatalf("exec %s: %v", bin, err)
	}
}
