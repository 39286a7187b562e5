package waterfall

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf8"
)

// Options shape the waterfall.
type Options struct {
	// Color turns on ANSI colours: errors red, hops cyan, successful
	// attempts green, Redis commands dim. The caller decides (a terminal,
	// --color).
	Color bool
	// BarWidth is the width of the time axis in characters; zero means 40.
	BarWidth int
	// All shows every Redis command span; by default they are counted on
	// their parent's line, and shown only when they failed.
	All bool
	// Client reads the trace; nil means a Client for the queryURL given to
	// Print.
	Client *Client
	// Wait is how long Print keeps asking while Jaeger does not have the
	// trace yet: a daemon exports its spans in batches, seconds after the
	// 202. Zero asks once.
	Wait time.Duration
}

// Print fetches the trace named by id (a trace id, or an export id whose
// trace is searched for) from the Jaeger query API at queryURL and writes
// its waterfall to w.
func Print(ctx context.Context, w io.Writer, queryURL, id string, opt Options) error {
	c := opt.Client
	if c == nil {
		c = &Client{BaseURL: queryURL}
	} else if c.BaseURL == "" {
		cc := *c
		cc.BaseURL = queryURL
		c = &cc
	}
	var tr *Trace
	err := untilFound(ctx, opt.Wait, func() error {
		traceID, err := c.Resolve(ctx, id)
		if err != nil {
			return err
		}
		tr, err = c.Trace(ctx, traceID)
		return err
	})
	if err != nil {
		return err
	}
	return Render(w, tr, opt)
}

// pollEvery is how often Print asks again for a trace not found yet.
const pollEvery = 250 * time.Millisecond

// untilFound calls fetch until it succeeds, fails otherwise than with
// ErrNotFound, or wait has passed.
func untilFound(ctx context.Context, wait time.Duration, fetch func() error) error {
	deadline := time.Now().Add(wait)
	t := time.NewTicker(pollEvery)
	defer t.Stop()
	for {
		err := fetch()
		if !errors.Is(err, ErrNotFound) || !time.Now().Before(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-t.C:
		}
	}
}

// ANSI styles.
const (
	reset = "\x1b[0m"
	red   = "\x1b[31m"
	bold  = "\x1b[1m"
	green = "\x1b[32m"
	cyan  = "\x1b[36m"
	dim   = "\x1b[2m"
)

// maxLabel bounds the label column.
const maxLabel = 72

// line is one row of the waterfall before layout.
type line struct {
	span   *Span
	depth  int
	label  string
	status string
	style  string // ANSI style of the row
	notes  []string
}

// Render writes tr's waterfall to w.
func Render(w io.Writer, tr *Trace, opt Options) error {
	width := opt.BarWidth
	if width <= 0 {
		width = 40
	}
	var lines []line
	var walk func(s *Span, depth int)
	walk = func(s *Span, depth int) {
		lines = append(lines, describe(s, depth, opt))
		for _, c := range s.Children {
			if !opt.All && c.IsDB() && !c.Error && !hasErrorBelow(c) {
				continue
			}
			walk(c, depth+1)
		}
	}
	for _, r := range tr.Roots {
		walk(r, 0)
	}

	labelW := 0
	for _, l := range lines {
		labelW = max(labelW, utf8.RuneCountInString(l.label))
	}
	labelW = min(labelW, maxLabel)
	total := tr.End.Sub(tr.Start)

	p := &printer{w: w, color: opt.Color}
	// Heading.
	head := fmt.Sprintf("trace %s", tr.ID)
	if id := tr.ExportID(); id != "" {
		head += "  export " + id
	}
	errs := tr.Errors()
	head += fmt.Sprintf("  %d spans  %s", len(tr.Spans), fmtDur(total))
	p.printf("%s", p.style(bold, head))
	if errs > 0 {
		p.printf("  %s", p.style(bold+red, fmt.Sprintf("%d error%s", errs, plural(errs))))
	}
	if n := tr.Orphans(); n > 0 {
		p.printf("\n%s", p.style(bold+red, fmt.Sprintf("%d span%s whose parent is not in Jaeger (not exported yet, or lost): shown at the top level", n, plural(n))))
	}
	if svcs := tr.Services(); len(svcs) > 1 {
		p.printf("\nservices: %s", strings.Join(svcs, ", "))
	}
	p.printf("\n%s  %s\n", pad("", labelW), axis(width, total))

	for _, l := range lines {
		label := truncate(l.label, labelW)
		b := bar(tr.Start, total, l.span, width)
		row := fmt.Sprintf("%s  |%s| %9s", pad(label, labelW), b, fmtDur(l.span.Duration()))
		if l.status != "" {
			row += "  " + l.status
		}
		p.printf("%s\n", p.style(l.style, row))
		for _, n := range l.notes {
			p.printf("%s\n", p.style(l.style+dim, pad("", 2*l.depth+4)+n))
		}
	}
	return p.err
}

// describe builds the row of one span: its label (indented name, kind,
// labelpipe's details) and its status.
func describe(s *Span, depth int, opt Options) line {
	l := line{span: s, depth: depth}
	var b strings.Builder
	b.WriteString(strings.Repeat("  ", depth))
	b.WriteString(s.Name)
	if s.Kind != "internal" {
		fmt.Fprintf(&b, " [%s]", s.Kind)
	}
	if s.Parent == nil || s.Parent.Service != s.Service {
		fmt.Fprintf(&b, " (%s)", s.Service)
	}
	if s.Parent == nil && s.ParentID != "" && !isZeroID(s.ParentID) {
		fmt.Fprintf(&b, " (parent %s missing)", s.ParentID)
	}
	a := s.Attrs
	var details []string
	if strings.HasPrefix(s.Name, "attempt ") {
		if n := a["labelpipe.attempt"]; n != "" {
			details = append(details, "#"+n)
		}
		switch st := a["labelpipe.breaker.state"]; st {
		case "", "closed":
		case "half-open":
			details = append(details, "probe (breaker half-open)")
		default:
			details = append(details, "breaker "+st)
		}
		if ms := a["labelpipe.backoff_ms"]; ms != "" && (ms != "0" || a["labelpipe.attempt"] != "1") {
			d := "after " + ms + "ms backoff"
			if a["labelpipe.retry_after_honoured"] == "true" {
				d = "after " + ms + "ms (Retry-After)"
			}
			details = append(details, d)
		}
		if ms := a["labelpipe.breaker_wait_ms"]; ms != "" && ms != "0" {
			details = append(details, "waited "+ms+"ms for the breaker")
		}
	}
	if s.Kind == "consumer" && s.Parent != nil && s.Parent.Kind == "producer" {
		// The hop: how long the message waited on the broker.
		details = append(details, "hop +"+fmtDur(s.Start.Sub(s.Parent.Start)))
	}
	if n := a["labelpipe.attempts"]; n != "" && strings.HasPrefix(s.Name, "process ") {
		details = append(details, n+" attempt"+plural(atoi(n)))
	}
	if !opt.All {
		if n := hiddenDB(s); n > 0 {
			details = append(details, fmt.Sprintf("+%d redis", n))
		}
	}
	if len(details) > 0 {
		b.WriteString("  " + strings.Join(details, ", "))
	}
	l.label = b.String()

	status := a["http.response.status_code"]
	if status == "" {
		status = a["http.status_code"]
	}
	switch {
	case s.Error:
		l.style = red
		l.status = "ERROR"
		if status != "" {
			l.status += " " + status
		}
		if s.Message != "" {
			l.notes = append(l.notes, "error: "+oneLine(s.Message, 160))
		}
	case strings.HasPrefix(s.Name, "attempt "):
		l.style = green
		l.status = "ok"
		if status != "" {
			l.status += " " + status
		}
	case s.Kind == "producer" || s.Kind == "consumer":
		l.style = cyan
	case s.IsDB():
		l.style = dim
	default:
		if status != "" {
			l.status = status
		}
	}
	for _, e := range s.Events {
		if e.Name == "exception" {
			continue // RecordError's copy of the status message
		}
		note := "· " + e.Name
		var kv []string
		for _, k := range []string{"reason", "labelpipe.duplicate_of", "labelpipe.prior_attempts", "labelpipe.dlq.reason", "http.response.status_code"} {
			if v := e.Attrs[k]; v != "" {
				kv = append(kv, k+"="+oneLine(v, 80))
			}
		}
		if len(kv) > 0 {
			note += " (" + strings.Join(kv, ", ") + ")"
		}
		l.notes = append(l.notes, note)
	}
	return l
}

func hiddenDB(s *Span) int {
	n := 0
	for _, c := range s.Children {
		if c.IsDB() && !c.Error && !hasErrorBelow(c) {
			n += 1 + countBelow(c)
		}
	}
	return n
}

func countBelow(s *Span) int {
	n := 0
	for _, c := range s.Children {
		n += 1 + countBelow(c)
	}
	return n
}

func hasErrorBelow(s *Span) bool {
	for _, c := range s.Children {
		if c.Error || hasErrorBelow(c) {
			return true
		}
	}
	return false
}

// bar places the span on the time axis: one character per width-th of the
// trace, at least one.
func bar(start time.Time, total time.Duration, s *Span, width int) string {
	from, to := 0, width
	if total > 0 {
		from = int(float64(s.Start.Sub(start)) / float64(total) * float64(width))
		to = int(float64(s.End.Sub(start))/float64(total)*float64(width) + 0.5)
	}
	from = min(max(from, 0), width-1)
	to = min(max(to, from+1), width)
	return strings.Repeat(" ", from) + strings.Repeat("█", to-from) + strings.Repeat(" ", width-to)
}

// axis labels the time axis: 0 at the left, the trace's length at the right.
func axis(width int, total time.Duration) string {
	end := fmtDur(total)
	gap := max(width+2-1-len(end), 1)
	return "0" + strings.Repeat(" ", gap) + end
}

func fmtDur(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%dµs", d.Round(time.Microsecond)/time.Microsecond)
	case d < time.Second:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	case d < time.Minute:
		return fmt.Sprintf("%.2fs", d.Seconds())
	}
	return d.Round(time.Second).String()
}

func pad(s string, n int) string {
	if c := utf8.RuneCountInString(s); c < n {
		return s + strings.Repeat(" ", n-c)
	}
	return s
}

func truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

func oneLine(s string, n int) string {
	return truncate(strings.Join(strings.Fields(s), " "), n)
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

func atoi(s string) int {
	n := 0
	for _, r := range s {
		if r < '0' || r > '9' {
			return 0
		}
		n = n*10 + int(r-'0')
	}
	return n
}

type printer struct {
	w     io.Writer
	color bool
	err   error
}

func (p *printer) printf(format string, a ...any) {
	if p.err == nil {
		_, p.err = fmt.Fprintf(p.w, format, a...)
	}
}

func (p *printer) style(style, s string) string {
	if !p.color || style == "" {
		return s
	}
	return style + s + reset
}
