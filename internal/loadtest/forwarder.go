package loadtest

import (
	"bytes"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ServeBaseline runs the minimal hand-written forwarder labelpipe is
// compared with: check the secret, decode, build the three bodies, POST them
// concurrently, answer. No durability, no retries, no tracing.
//
// args are the flags Run passes to `labelpipe bench serve-baseline`:
// --addr, the listen address, and --vendors, the comma-separated vendor
// URLs, one per sink body in order. ServeBaseline serves until the process
// ends; it returns an exit code only on failure: 2 for bad flags, 1 if it
// cannot serve. Flag errors and the serve error go to stderr.
func ServeBaseline(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve-baseline", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:8081", "listen address")
	vendorList := fs.String("vendors", "", "comma-separated vendor URLs")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	urls := strings.Split(*vendorList, ",")
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 30 * time.Second}
	h := func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("X-Aquarium-Secret")), []byte(secret)) != 1 {
			http.Error(w, `{"error":"bad secret"}`, http.StatusUnauthorized)
			return
		}
		var p baselinePayload
		if err := json.NewDecoder(r.Body).Decode(&p); err != nil {
			http.Error(w, `{"error":"bad json"}`, http.StatusBadRequest)
			return
		}
		bodies := p.bodies()
		var wg sync.WaitGroup
		var failed atomic.Bool
		for i, u := range urls {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := client.Post(u, "application/json", bytes.NewReader(bodies[i]))
				if err != nil {
					failed.Store(true)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode/100 != 2 {
					failed.Store(true)
				}
			}()
		}
		wg.Wait()
		if failed.Load() {
			http.Error(w, `{"error":"vendor failed"}`, http.StatusBadGateway)
			return
		}
		w.WriteHeader(http.StatusOK)
	}
	srv := &http.Server{Addr: *addr, Handler: http.HandlerFunc(h)}
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintln(stderr, err)
		return 1
	}
	return 0
}

// baselinePayload is the part of an issue-exported payload the forwarder
// reads.
type baselinePayload struct {
	Project string `json:"project"`
	Issue   struct {
		ID       string `json:"id"`
		Elements []struct {
			Dataset   string `json:"dataset"`
			ElementID string `json:"element_id"`
			FrameID   string `json:"frame_id"`
			FrameData struct {
				SensorData []struct {
					DataURLs struct {
						ImageURL string `json:"image_url"`
					} `json:"data_urls"`
				} `json:"sensor_data"`
			} `json:"frame_data"`
		} `json:"elements"`
	} `json:"issue"`
}

// bodies are the three sinks' request bodies for p, the Go counterparts of
// sinkBodies.
func (p *baselinePayload) bodies() [][]byte {
	image := func(i int) string {
		if sd := p.Issue.Elements[i].FrameData.SensorData; len(sd) > 0 {
			return sd[0].DataURLs.ImageURL
		}
		return ""
	}
	var keys []string
	var scale, ls []map[string]any
	for i, e := range p.Issue.Elements {
		keys = append(keys, e.FrameID)
		scale = append(scale, map[string]any{"unique_id": e.ElementID, "attachment": image(i), "project": e.Dataset})
		ls = append(ls, map[string]any{"data": map[string]any{"image": image(i)}, "meta": map[string]any{"frame_id": e.FrameID, "element_id": e.ElementID}})
	}
	lb, _ := json.Marshal(map[string]any{"query": "mutation Batch", "variables": map[string]any{"p": p.Project, "name": "aq-" + p.Issue.ID, "keys": keys}})
	sc, _ := json.Marshal(map[string]any{"issue": p.Issue.ID, "tasks": scale})
	lsb, _ := json.Marshal(map[string]any{"issue": p.Issue.ID, "tasks": ls})
	return [][]byte{lb, sc, lsb}
}
