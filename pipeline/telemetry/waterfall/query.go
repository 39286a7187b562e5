// Package waterfall fetches one trace from Jaeger's query API and prints
// it in the terminal as a waterfall: every span on a line, indented under
// its parent, with a bar placed and sized by its time within the trace.
// labelpipe's stages, broker hops and delivery attempts are labelled (the
// attempt number, the breaker state, the vendor's HTTP status) and errors
// stand out, so that an export's journey can be read where no Jaeger UI is
// at hand.
//
// The trace comes from Jaeger's stable query API, GET /api/v3/traces/{id}:
// OTLP JSON wrapped in {"result": …}; Jaeger v1.76.0 answers in one object,
// and later versions may stream several, which are merged. An export id
// (the 202 answer's "id") is mapped to its trace by searching for the
// labelpipe.export.id tag the webhook span carries; the v3 HTTP API of
// v1.76.0 cannot filter by attribute, so that search goes through Jaeger's
// /api/traces search, and only the trace id is taken from it.
package waterfall

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// DefaultQueryURL is Jaeger's query API on its standard port.
const DefaultQueryURL = "http://127.0.0.1:16686"

// ExportIDAttribute is the span attribute that names an export.
const ExportIDAttribute = "labelpipe.export.id"

// ErrNotFound is returned when Jaeger has no trace for the id.
var ErrNotFound = errors.New("not found")

// Client reads traces from one Jaeger query API.
type Client struct {
	// BaseURL is the query API, e.g. http://127.0.0.1:16686.
	BaseURL string
	// HTTP is the client to use; nil means one with a 10s timeout.
	HTTP *http.Client
	// Service is the service.name an export id is searched under; empty
	// means "labelpipe".
	Service string
	// Lookback is how far back an export id is searched; zero means 7 days.
	Lookback time.Duration
}

var traceIDPattern = regexp.MustCompile(`^(?:[0-9a-fA-F]{16}|[0-9a-fA-F]{32})$`)

// IsTraceID reports whether id reads as a trace id (16 or 32 hex digits)
// rather than an export id (a ULID, 26 characters).
func IsTraceID(id string) bool { return traceIDPattern.MatchString(id) }

// Resolve returns the trace id for id: id itself when it is a trace id,
// else the trace of the export with that id.
func (c *Client) Resolve(ctx context.Context, id string) (string, error) {
	id = strings.TrimSpace(id)
	if id == "" {
		return "", errors.New("empty id: want a trace id or an export id")
	}
	if IsTraceID(id) {
		return normTraceID(id), nil
	}
	return c.exportTrace(ctx, id)
}

// Trace fetches the trace with that id from /api/v3/traces/{id}.
func (c *Client) Trace(ctx context.Context, traceID string) (*Trace, error) {
	u, err := c.url("/api/v3/traces/" + url.PathEscape(normTraceID(traceID)))
	if err != nil {
		return nil, err
	}
	body, status, err := c.get(ctx, u)
	if err != nil {
		return nil, err
	}
	defer func() { _ = body.Close() }()
	if status == http.StatusNotFound {
		_, _ = io.Copy(io.Discard, io.LimitReader(body, 1<<16))
		return nil, fmt.Errorf("trace %s: %w in Jaeger at %s (not exported yet, sampled out, or expired)", traceID, ErrNotFound, c.BaseURL)
	}
	tr := &Trace{ID: normTraceID(traceID)}
	// The answer may be several {"result": …} objects one after another.
	dec := json.NewDecoder(io.LimitReader(body, maxAnswer))
	for {
		var chunk struct {
			Result *tracesData `json:"result"`
			Error  *apiError   `json:"error"`
		}
		err := dec.Decode(&chunk)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("trace %s: decode Jaeger's answer (HTTP %d): %w", traceID, status, err)
		}
		if chunk.Error != nil {
			return nil, fmt.Errorf("trace %s: Jaeger: %s", traceID, chunk.Error)
		}
		if chunk.Result != nil {
			tr.add(chunk.Result)
		}
	}
	if status != http.StatusOK {
		return nil, fmt.Errorf("trace %s: Jaeger answered HTTP %d", traceID, status)
	}
	if len(tr.Spans) == 0 {
		return nil, fmt.Errorf("trace %s: %w in Jaeger at %s", traceID, ErrNotFound, c.BaseURL)
	}
	tr.link()
	return tr, nil
}

// maxAnswer bounds the answer read: a trace of a few thousand spans is
// a few MB.
const maxAnswer = 256 << 20

type apiError struct {
	HTTPCode int    `json:"httpCode"`
	Message  string `json:"message"`
}

func (e *apiError) String() string { return fmt.Sprintf("%s (HTTP %d)", e.Message, e.HTTPCode) }

// exportTrace finds the trace of an export by its labelpipe.export.id tag.
func (c *Client) exportTrace(ctx context.Context, exportID string) (string, error) {
	service := c.Service
	if service == "" {
		service = "labelpipe"
	}
	lookback := c.Lookback
	if lookback <= 0 {
		lookback = 7 * 24 * time.Hour
	}
	tags, _ := json.Marshal(map[string]string{ExportIDAttribute: exportID})
	q := url.Values{
		"service":  {service},
		"tags":     {string(tags)},
		"start":    {strconv.FormatInt(time.Now().Add(-lookback).UnixMicro(), 10)},
		"end":      {strconv.FormatInt(time.Now().Add(time.Minute).UnixMicro(), 10)},
		"limit":    {"20"},
		"lookback": {"custom"},
	}
	u, err := c.url("/api/traces?" + q.Encode())
	if err != nil {
		return "", err
	}
	body, status, err := c.get(ctx, u)
	if err != nil {
		return "", err
	}
	defer func() { _ = body.Close() }()
	var ans struct {
		Data []struct {
			TraceID string `json:"traceID"`
			Spans   []struct {
				StartTime int64 `json:"startTime"`
			} `json:"spans"`
		} `json:"data"`
		Errors []struct {
			Msg string `json:"msg"`
		} `json:"errors"`
	}
	if err := json.NewDecoder(io.LimitReader(body, maxAnswer)).Decode(&ans); err != nil {
		return "", fmt.Errorf("export %s: search Jaeger (HTTP %d): %w", exportID, status, err)
	}
	if status != http.StatusOK || len(ans.Errors) > 0 {
		msg := ""
		if len(ans.Errors) > 0 {
			msg = ": " + ans.Errors[0].Msg
		}
		return "", fmt.Errorf("export %s: search Jaeger: HTTP %d%s", exportID, status, msg)
	}
	// An export has one trace; a redelivery from another trace (a replay
	// from the DLQ) is later. Take the earliest.
	best, bestStart := "", int64(0)
	for _, t := range ans.Data {
		start := int64(0)
		for _, s := range t.Spans {
			if start == 0 || s.StartTime < start {
				start = s.StartTime
			}
		}
		if best == "" || start < bestStart {
			best, bestStart = t.TraceID, start
		}
	}
	if best == "" {
		return "", fmt.Errorf("export %s: no trace of service %q with %s=%s in Jaeger at %s in the last %s: %w",
			exportID, service, ExportIDAttribute, exportID, c.BaseURL, lookback, ErrNotFound)
	}
	return normTraceID(best), nil
}

func (c *Client) url(path string) (string, error) {
	base := strings.TrimRight(strings.TrimSpace(c.BaseURL), "/")
	if base == "" {
		base = DefaultQueryURL
	}
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("jaeger query URL %q: want http(s)://host:port", c.BaseURL)
	}
	return base + path, nil
}

func (c *Client) get(ctx context.Context, u string) (io.ReadCloser, int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, 0, err
	}
	req.Header.Set("Accept", "application/json")
	hc := c.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 10 * time.Second}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, 0, fmt.Errorf("jaeger query API at %s: %w", c.BaseURL, err)
	}
	return resp.Body, resp.StatusCode, nil
}

// normTraceID is the id as 32 lower-case hex digits (Jaeger may drop
// leading zeros; a 64-bit id is zero-extended).
func normTraceID(id string) string {
	id = strings.ToLower(strings.TrimSpace(id))
	if len(id) < 32 {
		id = strings.Repeat("0", 32-len(id)) + id
	}
	return id
}
