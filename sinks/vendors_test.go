package sinks_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/labelpipe/labelpipe/internal/vendortest"
	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/pipeline/resilience"
	"github.com/labelpipe/labelpipe/sinks"
)

// These tests run the sinks against the fake vendors through the
// resilience policy, the way the router delivers.

func fastPolicy(t *testing.T, mut func(*resilience.Config), opts resilience.Options) *resilience.Policy {
	t.Helper()
	c := resilience.Defaults()
	c.Retry = resilience.Retry{MaxAttempts: 6, InitialInterval: time.Millisecond, MaxInterval: 5 * time.Millisecond}
	c.Breaker.OpenTimeout = time.Second
	if mut != nil {
		mut(&c)
	}
	p, err := resilience.New(c, opts)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// deliver runs one request through the policy with a per-attempt timeout.
func deliver(ctx context.Context, p *resilience.Policy, s pipeline.Sink, r *pipeline.Request, timeout func(resilience.Attempt) time.Duration) (int, []resilience.Attempt, error) {
	var seen []resilience.Attempt
	n, err := p.Do(ctx, func(ctx context.Context, a resilience.Attempt) error {
		seen = append(seen, a)
		ctx, cancel := context.WithTimeout(ctx, timeout(a))
		defer cancel()
		return s.Send(ctx, r)
	})
	return n, seen, err
}

func seconds(n int) func(resilience.Attempt) time.Duration {
	return func(resilience.Attempt) time.Duration { return time.Duration(n) * time.Second }
}

func scaleTask(uid string) string {
	return fmt.Sprintf(`{"project":"relabel","attachment":"https://img/%s.jpg","unique_id":%q,"geometries":{"box":{"objects_to_annotate":["pedestrian"]}}}`, uid, uid)
}

func scaleSink(t *testing.T, sc *vendortest.Scale) *sinks.HTTP {
	return newHTTPSink(t, sc.TaskURL(), func(c *sinks.HTTPConfig) {
		c.BasicAuth = &sinks.BasicAuth{Username: "live_key"}
		c.ConflictIsSuccess = true
	})
}

func TestScaleTimedOutAttemptIsDeliveredOnce(t *testing.T) {
	sc := vendortest.NewScale(t, "live_key")
	sc.SetLatency(time.Hour) // held until the test lets it go
	s := scaleSink(t, sc)
	p := fastPolicy(t, nil, resilience.Options{Name: "scale"})
	bounded, stop := context.WithTimeout(t.Context(), 10*time.Second)
	defer stop()
	r := request(scaleTask("i1.e1"))
	n, err := p.Do(bounded, func(ctx context.Context, a resilience.Attempt) error {
		if a.N == 1 {
			// The attempt times out once the vendor has the request...
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			go func() {
				if sc.WaitArrived(ctx, 1) == nil {
					cancel()
				}
			}()
			return s.Send(ctx, r)
		}
		// ...and the vendor carries it out although we gave up on it.
		sc.SetLatency(0)
		if err := sc.WaitAccepted(ctx, 1); err != nil {
			return err
		}
		return s.Send(ctx, r)
	})
	if err != nil || n != 2 {
		t.Fatalf("Do = %d, %v; want success on the 2nd attempt", n, err)
	}
	if sc.Accepted() != 1 || sc.Duplicates() != 1 || len(sc.Tasks()) != 1 {
		t.Fatalf("accepted %d duplicates %d tasks %d: want one task, the retry answered 409", sc.Accepted(), sc.Duplicates(), len(sc.Tasks()))
	}
}

func TestScaleRetriesHonourRetryAfter(t *testing.T) {
	sc := vendortest.NewScale(t, "live_key")
	sc.FailNext(2, http.StatusTooManyRequests, "1") // 1s, capped by max_interval
	s := scaleSink(t, sc)
	p := fastPolicy(t, func(c *resilience.Config) { c.Retry.MaxInterval = 30 * time.Millisecond }, resilience.Options{})
	n, seen, err := deliver(t.Context(), p, s, request(scaleTask("i2.e1")), seconds(5))
	if err != nil || n != 3 {
		t.Fatalf("Do = %d, %v", n, err)
	}
	if !seen[1].RetryAfter || seen[1].Backoff != 30*time.Millisecond {
		t.Fatalf("attempt 2 %+v: want Retry-After honoured, capped at 30ms", seen[1])
	}
	if sc.RequestCount() != 3 || sc.Accepted() != 1 || sc.Duplicates() != 0 {
		t.Fatalf("requests %d accepted %d duplicates %d", sc.RequestCount(), sc.Accepted(), sc.Duplicates())
	}
}

func TestScaleShapeErrorIsPermanent(t *testing.T) {
	sc := vendortest.NewScale(t, "live_key")
	s := scaleSink(t, sc)
	p := fastPolicy(t, nil, resilience.Options{})
	n, _, err := deliver(t.Context(), p, s, request(`{"project":"relabel"}`), seconds(5))
	var de *pipeline.DeliveryError
	if n != 1 || !errors.Is(err, resilience.ErrPermanent) || !errors.As(err, &de) || de.Status != 400 {
		t.Fatalf("Do = %d, %v; want one permanent 400", n, err)
	}
}

func TestScaleOutageOpensBreaker(t *testing.T) {
	sc := vendortest.NewScale(t, "live_key")
	sc.SetDown(http.StatusServiceUnavailable)
	s := scaleSink(t, sc)
	changes := make(chan string, 8)
	p := fastPolicy(t, func(c *resilience.Config) {
		c.Retry.MaxAttempts = 50
		c.Breaker.ConsecutiveFailures = 3
		c.Breaker.OpenTimeout = 300 * time.Millisecond
	}, resilience.Options{Name: "scale", OnStateChange: func(from, to gobreaker.State) { changes <- to.String() }})
	done := make(chan error, 1)
	go func() {
		_, _, err := deliver(t.Context(), p, s, request(scaleTask("i3.e1")), seconds(5))
		done <- err
	}()
	select {
	case to := <-changes:
		if to != "open" {
			t.Fatalf("first transition to %q", to)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the breaker did not open")
	}
	if got := sc.RequestCount(); got != 3 {
		t.Fatalf("%d requests before the breaker opened, want 3", got)
	}
	sc.SetUp() // the vendor recovers while the breaker is open
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if sc.RequestCount() != 4 || sc.Accepted() != 1 {
		t.Fatalf("requests %d accepted %d: want only the half-open probe after the outage", sc.RequestCount(), sc.Accepted())
	}
}

func TestLabelboxBatchIsIdempotent(t *testing.T) {
	lb := vendortest.NewLabelbox(t, "lb-key")
	s := newGraphQLSink(t, lb.Endpoint(), func(c *sinks.GraphQLConfig) {
		c.Headers = map[string]string{"Authorization": "Bearer lb-key"}
		c.Variables = `{projectId: "p1", input: {name: "aquarium-\($export.issue_id)", globalKeys: [.issue.elements[].frame_id]}}`
		c.AlreadyDone = "already exists"
	})
	payload := map[string]any{"issue": map[string]any{"elements": []any{map[string]any{"frame_id": "f1"}, map[string]any{"frame_id": "f2"}}}}
	bodies, err := s.Render(t.Context(), payload, map[string]any{"issue_id": "i4"})
	if err != nil || len(bodies) != 1 {
		t.Fatalf("Render = %d, %v", len(bodies), err)
	}
	r := &pipeline.Request{Sink: "labelbox", ExportID: "e4", Chunks: 1, Body: bodies[0]}
	lb.FailNextGraphQL(1, "INTERNAL_SERVER_ERROR", "database hiccup")
	lb.RateLimitNext(1)
	p := fastPolicy(t, nil, resilience.Options{})
	n, _, err := deliver(t.Context(), p, s, r, seconds(5))
	if err != nil || n != 3 {
		t.Fatalf("Do = %d, %v; want success on the 3rd attempt", n, err)
	}
	// A redelivery (say after a crash before the ack) is harmless.
	if n, _, err := deliver(t.Context(), p, s, r, seconds(5)); err != nil || n != 1 {
		t.Fatalf("redelivery: %d, %v", n, err)
	}
	if lb.Accepted() != 1 || lb.Duplicates() != 1 {
		t.Fatalf("accepted %d duplicates %d", lb.Accepted(), lb.Duplicates())
	}
	if b := lb.Batches("p1"); len(b) != 1 || b[0].Name != "aquarium-i4" || len(b[0].GlobalKeys) != 2 {
		t.Fatalf("batches %+v", b)
	}
}

func TestLabelboxBadKeyIsPermanent(t *testing.T) {
	lb := vendortest.NewLabelbox(t, "lb-key")
	s := newGraphQLSink(t, lb.Endpoint(), func(c *sinks.GraphQLConfig) {
		c.Headers = map[string]string{"Authorization": "Bearer wrong"}
		c.Variables = `{projectId: "p1", input: {name: "x", globalKeys: ["a"]}}`
	})
	bodies, _ := s.Render(t.Context(), nil, nil)
	p := fastPolicy(t, nil, resilience.Options{})
	n, _, err := deliver(t.Context(), p, s, request(string(bodies[0])), seconds(5))
	if n != 1 || !errors.Is(err, resilience.ErrPermanent) {
		t.Fatalf("Do = %d, %v; want one permanent failure", n, err)
	}
}

func TestLabelStudioImport(t *testing.T) {
	ls := vendortest.NewLabelStudio(t, "ls-token")
	s := newHTTPSink(t, ls.ImportURL(7), func(c *sinks.HTTPConfig) {
		c.Headers = map[string]string{"Authorization": "Token ls-token"}
		c.Body = `[.issue.elements[] | {data: {image: .url}, meta: {aquarium_export: $export.id, element_id: .element_id}}]`
		c.SuccessStatus = []int{201}
	})
	payload := map[string]any{"issue": map[string]any{"elements": []any{
		map[string]any{"element_id": "a", "url": "https://img/a.jpg"},
		map[string]any{"element_id": "b", "url": "https://img/b.jpg"},
	}}}
	bodies, err := s.Render(t.Context(), payload, map[string]any{"id": "e5"})
	if err != nil || len(bodies) != 1 {
		t.Fatalf("Render = %d, %v", len(bodies), err)
	}
	if err := s.Send(t.Context(), request(string(bodies[0]))); err != nil {
		t.Fatal(err)
	}
	tasks := ls.Tasks(7)
	if len(tasks) != 2 || tasks[1].Meta["element_id"] != "b" || tasks[0].Meta["aquarium_export"] != "e5" {
		t.Fatalf("tasks %+v", tasks)
	}
	de := deliveryError(t, s.Send(t.Context(), request(`[{"data":{"img":"x"}}]`)))
	if de.Retry || de.Status != 400 {
		t.Fatalf("bad shape: %+v, want permanent 400", de)
	}
}
