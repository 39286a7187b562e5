package waterfall

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Trace is one trace as the waterfall needs it.
type Trace struct {
	// ID is 32 lower-case hex digits.
	ID    string
	Spans []*Span
	// Roots are the spans whose parent is not in the trace, by start time.
	Roots []*Span
	// Start and End bound every span.
	Start, End time.Time
}

// Span is one span of a Trace.
type Span struct {
	ID, ParentID string
	Name         string
	// Service is the resource's service.name.
	Service string
	// Kind is server, client, producer, consumer or internal.
	Kind       string
	Start, End time.Time
	// Error is set when the span's status is Error; Message is its text.
	Error   bool
	Message string
	Attrs   map[string]string
	Events  []Event
	// Children are the spans whose parent this is, by start time.
	Children []*Span
	// Parent is nil for a root.
	Parent *Span
}

// Event is a span event.
type Event struct {
	Name  string
	Time  time.Time
	Attrs map[string]string
}

// Duration is the span's length.
func (s *Span) Duration() time.Duration { return s.End.Sub(s.Start) }

// IsDB reports whether the span is a database (Redis) command.
func (s *Span) IsDB() bool { return s.Attrs["db.system"] != "" }

// OTLP JSON, as Jaeger's /api/v3 writes it (hex ids, int64 as strings,
// enums as numbers or names).
type tracesData struct {
	ResourceSpans []struct {
		Resource struct {
			Attributes []keyValue `json:"attributes"`
		} `json:"resource"`
		ScopeSpans []struct {
			Spans []otlpSpan `json:"spans"`
		} `json:"scopeSpans"`
	} `json:"resourceSpans"`
}

type otlpSpan struct {
	TraceID           string          `json:"traceId"`
	SpanID            string          `json:"spanId"`
	ParentSpanID      string          `json:"parentSpanId"`
	Name              string          `json:"name"`
	Kind              json.RawMessage `json:"kind"`
	StartTimeUnixNano json.RawMessage `json:"startTimeUnixNano"`
	EndTimeUnixNano   json.RawMessage `json:"endTimeUnixNano"`
	Attributes        []keyValue      `json:"attributes"`
	Events            []struct {
		TimeUnixNano json.RawMessage `json:"timeUnixNano"`
		Name         string          `json:"name"`
		Attributes   []keyValue      `json:"attributes"`
	} `json:"events"`
	Status struct {
		Code    json.RawMessage `json:"code"`
		Message string          `json:"message"`
	} `json:"status"`
}

type keyValue struct {
	Key   string   `json:"key"`
	Value anyValue `json:"value"`
}

type anyValue struct {
	StringValue *string         `json:"stringValue"`
	BoolValue   *bool           `json:"boolValue"`
	IntValue    json.RawMessage `json:"intValue"`
	DoubleValue *float64        `json:"doubleValue"`
	ArrayValue  *struct {
		Values []anyValue `json:"values"`
	} `json:"arrayValue"`
}

func (v anyValue) String() string {
	switch {
	case v.StringValue != nil:
		return *v.StringValue
	case v.BoolValue != nil:
		return strconv.FormatBool(*v.BoolValue)
	case v.IntValue != nil:
		return strings.Trim(string(v.IntValue), `"`)
	case v.DoubleValue != nil:
		return strconv.FormatFloat(*v.DoubleValue, 'g', -1, 64)
	case v.ArrayValue != nil:
		parts := make([]string, len(v.ArrayValue.Values))
		for i, e := range v.ArrayValue.Values {
			parts[i] = e.String()
		}
		return "[" + strings.Join(parts, ",") + "]"
	}
	return ""
}

func attrs(kvs []keyValue) map[string]string {
	m := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		m[kv.Key] = kv.Value.String()
	}
	return m
}

// unixNano reads an int64 written as a JSON string or number.
func unixNano(raw json.RawMessage) time.Time {
	n, err := strconv.ParseInt(strings.Trim(string(raw), `"`), 10, 64)
	if err != nil || n <= 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

var kinds = map[string]string{
	"1": "internal", "2": "server", "3": "client", "4": "producer", "5": "consumer",
	"SPAN_KIND_INTERNAL": "internal", "SPAN_KIND_SERVER": "server", "SPAN_KIND_CLIENT": "client",
	"SPAN_KIND_PRODUCER": "producer", "SPAN_KIND_CONSUMER": "consumer",
}

func enum(raw json.RawMessage) string { return strings.Trim(string(raw), `"`) }

// add merges one {"result": …} of the answer into the trace.
func (tr *Trace) add(td *tracesData) {
	for _, rs := range td.ResourceSpans {
		service := attrs(rs.Resource.Attributes)["service.name"]
		for _, ss := range rs.ScopeSpans {
			for _, os := range ss.Spans {
				s := &Span{
					ID:       strings.ToLower(os.SpanID),
					ParentID: strings.ToLower(os.ParentSpanID),
					Name:     os.Name,
					Service:  service,
					Kind:     kinds[enum(os.Kind)],
					Start:    unixNano(os.StartTimeUnixNano),
					End:      unixNano(os.EndTimeUnixNano),
					Attrs:    attrs(os.Attributes),
					Message:  os.Status.Message,
				}
				if s.Kind == "" {
					s.Kind = "internal"
				}
				if s.End.Before(s.Start) {
					s.End = s.Start
				}
				code := enum(os.Status.Code)
				s.Error = code == "2" || code == "STATUS_CODE_ERROR"
				for _, e := range os.Events {
					s.Events = append(s.Events, Event{Name: e.Name, Time: unixNano(e.TimeUnixNano), Attrs: attrs(e.Attributes)})
				}
				tr.Spans = append(tr.Spans, s)
			}
		}
	}
}

// link builds the tree, orders it by time and finds the trace's bounds.
// A span whose parent is missing (not exported yet, or lost) is a root.
func (tr *Trace) link() {
	byID := make(map[string]*Span, len(tr.Spans))
	for _, s := range tr.Spans {
		if _, dup := byID[s.ID]; !dup {
			byID[s.ID] = s
		}
	}
	for _, s := range tr.Spans {
		if p, ok := byID[s.ParentID]; ok && p != s && s.ParentID != "" && !isZeroID(s.ParentID) {
			s.Parent = p
			p.Children = append(p.Children, s)
		} else {
			tr.Roots = append(tr.Roots, s)
		}
		if tr.Start.IsZero() || s.Start.Before(tr.Start) {
			tr.Start = s.Start
		}
		if s.End.After(tr.End) {
			tr.End = s.End
		}
	}
	byStart := func(a, b *Span) int {
		if c := a.Start.Compare(b.Start); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	}
	slices.SortStableFunc(tr.Roots, byStart)
	for _, s := range tr.Spans {
		slices.SortStableFunc(s.Children, byStart)
	}
}

func isZeroID(id string) bool { return strings.Trim(id, "0") == "" }

// Errors counts the spans with error status.
func (tr *Trace) Errors() int {
	n := 0
	for _, s := range tr.Spans {
		if s.Error {
			n++
		}
	}
	return n
}

// Orphans counts the spans whose parent is not in the trace.
func (tr *Trace) Orphans() int {
	n := 0
	for _, r := range tr.Roots {
		if r.ParentID != "" && !isZeroID(r.ParentID) {
			n++
		}
	}
	return n
}

// ExportID is the export the trace carries, if any span names one.
func (tr *Trace) ExportID() string {
	for _, s := range tr.Spans {
		if id := s.Attrs[ExportIDAttribute]; id != "" {
			return id
		}
	}
	return ""
}

// Services lists the services in the trace, in order of appearance.
func (tr *Trace) Services() []string {
	var out []string
	for _, s := range tr.Spans {
		if s.Service != "" && !slices.Contains(out, s.Service) {
			out = append(out, s.Service)
		}
	}
	return out
}

func (s *Span) String() string { return fmt.Sprintf("%s %s (%s)", s.Service, s.Name, s.ID) }
