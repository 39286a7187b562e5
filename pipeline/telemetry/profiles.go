package telemetry

import (
	"net/http"
	"net/http/pprof"
)

// Profiles serves Go's profiles under /debug/pprof/, for the admin
// listener when admin.pprof is true (pipeline.Options.Profiles).
func Profiles() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/heap", pprof.Handler("heap").ServeHTTP)
	return mux
}
