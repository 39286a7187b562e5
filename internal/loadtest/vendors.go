package loadtest

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// fakeVendors are fake vendors that count, per issue, how many requests
// each one received.
type fakeVendors struct {
	servers []*http.Server
	lns     []net.Listener
	latency time.Duration
	fault   Fault
	faultAt atomic.Pointer[time.Time] // when the fault began; nil before

	mu       sync.Mutex
	counts   []map[string]int
	complete map[string]int // issue → vendors that have it
	done     int
	sentAt   map[string]time.Time
	lat      []time.Duration
	healthy  map[string]int // issue → vendors but the faulty one that have it
	hdone    int            // issues every healthy vendor has
	hlat     []time.Duration
	changed  chan struct{}
	conns    atomic.Int64 // connections opened to the vendors
}

// newFakeVendors starts n fake vendors on 127.0.0.1, each answering every
// request after latency.
func newFakeVendors(n int, latency time.Duration, fault Fault) *fakeVendors {
	v := &fakeVendors{latency: latency, fault: fault, complete: map[string]int{}, healthy: map[string]int{},
		sentAt: map[string]time.Time{}, changed: make(chan struct{}, 1)}
	for i := 0; i < n; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			panic(err)
		}
		idx := i
		v.counts = append(v.counts, map[string]int{})
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { v.serve(idx, w, r) }),
			ConnState: func(_ net.Conn, s http.ConnState) {
				if s == http.StateNew {
					v.conns.Add(1)
				}
			}}
		v.servers, v.lns = append(v.servers, srv), append(v.lns, ln)
		go srv.Serve(ln)
	}
	return v
}

// urls are the vendors' base URLs, in order.
func (v *fakeVendors) urls() []string {
	out := make([]string, len(v.lns))
	for i, ln := range v.lns {
		out[i] = "http://" + ln.Addr().String() + "/"
	}
	return out
}

// sent records when the export for issue was posted, for its delivery
// latency.
func (v *fakeVendors) sent(issue string, t time.Time) {
	v.mu.Lock()
	v.sentAt[issue] = t
	v.mu.Unlock()
}

// serve is vendor idx's handler: it finds the issue in the body (the issue
// field, or the Labelbox-style batch name "aq-ISSUE") and counts it.
func (v *fakeVendors) serve(idx int, w http.ResponseWriter, r *http.Request) {
	var body struct {
		Issue     string `json:"issue"`
		Variables struct {
			Name string `json:"name"`
		} `json:"variables"`
	}
	raw, err := io.ReadAll(r.Body)
	if err == nil {
		err = json.Unmarshal(raw, &body)
	}
	if err != nil {
		http.Error(w, `{"error":"bad json"}`, http.StatusBadRequest)
		return
	}
	issue := body.Issue
	if issue == "" {
		issue = strings.TrimPrefix(body.Variables.Name, "aq-")
	}
	if v.latency > 0 {
		time.Sleep(v.latency) // the simulated vendor's own processing time
	}
	if idx == faultyVendor && v.misbehave(w, r) {
		return
	}
	v.mu.Lock()
	v.counts[idx][issue]++
	if v.counts[idx][issue] == 1 && idx != faultyVendor && v.fault.Mode != "" {
		v.healthy[issue]++
		if v.healthy[issue] == len(v.counts)-1 {
			v.hdone++
			if t, ok := v.sentAt[issue]; ok {
				v.hlat = append(v.hlat, time.Since(t))
			}
		}
	}
	if v.counts[idx][issue] == 1 {
		v.complete[issue]++
		if v.complete[issue] == len(v.counts) {
			v.done++
			if t, ok := v.sentAt[issue]; ok {
				v.lat = append(v.lat, time.Since(t))
			}
		}
	}
	v.mu.Unlock()
	select {
	case v.changed <- struct{}{}:
	default:
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write([]byte(`{"data":{}}`))
}

// faultyVendor is the vendor a Fault applies to.
const faultyVendor = 0

// Fault is how the first fake vendor misbehaves once the load starts, so
// that the healthy vendors' delivery latency can be measured against a
// run without it.
type Fault struct {
	// Mode is "" (none), "down" (503 for For), "hang" (never answers) or
	// "slow" (Extra more per request).
	Mode       string
	For, Extra time.Duration
}

// ParseFault reads "down=5s", "hang" or "slow=200ms"; "" is no fault.
func ParseFault(s string) (Fault, error) {
	mode, arg, _ := strings.Cut(s, "=")
	f := Fault{Mode: mode}
	var err error
	switch mode {
	case "":
	case "hang":
	case "down":
		f.For, err = time.ParseDuration(arg)
	case "slow":
		f.Extra, err = time.ParseDuration(arg)
	default:
		return f, fmt.Errorf("unknown fault %q (want down=DURATION, hang or slow=DURATION)", s)
	}
	if err != nil {
		return f, fmt.Errorf("fault %q: %w", s, err)
	}
	return f, nil
}

// startFault begins the fault (after the warm-up export).
func (v *fakeVendors) startFault() {
	now := time.Now()
	v.faultAt.Store(&now)
}

// misbehave applies the fault to one request and reports whether it
// answered it.
func (v *fakeVendors) misbehave(w http.ResponseWriter, r *http.Request) bool {
	at := v.faultAt.Load()
	if at == nil {
		return false
	}
	switch v.fault.Mode {
	case "down":
		if time.Since(*at) < v.fault.For {
			http.Error(w, `{"error":"vendor down"}`, http.StatusServiceUnavailable)
			return true
		}
	case "hang":
		<-r.Context().Done()
		return true
	case "slow":
		time.Sleep(v.fault.Extra)
	}
	return false
}

// healthyLatencies are, per export, the time from sending the webhook
// until every vendor but the faulty one received its request (none
// without a fault).
func (v *fakeVendors) healthyLatencies() []time.Duration {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]time.Duration(nil), v.hlat...)
}

// wait blocks until n issues reached every vendor (every healthy one when
// the faulty vendor hangs), or timeout.
func (v *fakeVendors) wait(n int, timeout time.Duration) bool {
	deadline := time.After(timeout)
	for {
		v.mu.Lock()
		done := v.done
		if v.fault.Mode == "hang" {
			done = v.hdone + 1 // the warm-up export reached all three
		}
		v.mu.Unlock()
		if done-1 >= n { // -1: the warm-up export
			return true
		}
		select {
		case <-v.changed:
		case <-deadline:
			return false
		}
	}
}

// waitIssue blocks until issue reached every vendor, or timeout.
func (v *fakeVendors) waitIssue(issue string, timeout time.Duration) error {
	deadline := time.After(timeout)
	for {
		v.mu.Lock()
		c := v.complete[issue]
		v.mu.Unlock()
		if c == len(v.counts) {
			return nil
		}
		select {
		case <-v.changed:
		case <-deadline:
			return fmt.Errorf("%s reached %d of %d vendors", issue, c, len(v.counts))
		}
	}
}

// latencies are, per export, the time from sending the webhook until the
// last vendor received its request.
func (v *fakeVendors) latencies() []time.Duration {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]time.Duration(nil), v.lat...)
}

// lostAndDuplicated counts, over all vendors and exports 0..n-1, the
// exports a vendor never received and the requests beyond the first. A
// vendor that hangs never receives anything: its exports are still queued
// (or dead-lettered) when the run ends, not lost, so they are left out.
func (v *fakeVendors) lostAndDuplicated(n int) (lost, dup int) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for vi, c := range v.counts {
		for i := 0; i < n; i++ {
			switch k := c[issueID(i)]; {
			case k == 0:
				if vi == faultyVendor && v.fault.Mode == "hang" {
					continue
				}
				lost++
			case k > 1:
				dup += k - 1
			}
		}
	}
	return lost, dup
}

// close stops the vendors' servers.
func (v *fakeVendors) close() {
	for _, s := range v.servers {
		_ = s.Close()
	}
}
