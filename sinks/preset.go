package sinks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"

	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/pipeline/redact"
	"github.com/labelpipe/labelpipe/pipeline/resilience"
)

// This file is what the vendor presets (labelbox, scale, label_studio,
// cvat) share: the url and credential keys, the vendor's client, how an
// export's elements are read, and how an element a vendor cannot take is
// skipped and counted.
//
// A preset's config embeds PresetConfig inline, so that every preset
// takes the same url, api_key and api_key_file keys:
//
//	type ScaleConfig struct {
//		PresetConfig `yaml:",inline"`
//		Project string `yaml:"project"`
//	}
//
// Its Validate calls PresetConfig.Validate (pure: the key file is read
// when the sink is built), its build calls newPreset, and its Render
// reads the export with ReadIssue.

// PresetConfig is the part of a vendor preset's config every preset has.
type PresetConfig struct {
	// URL is the vendor's base URL: scheme, host, and the path prefix of
	// a proxy if any. The preset appends the API path (/graphql, /v1/...,
	// /api/...). Default: the vendor's public API, where it has one.
	URL string `yaml:"url"`
	// APIKey is the credential (a secret: use ${VAR}; never shown). Set
	// exactly one of APIKey and APIKeyFile.
	APIKey string `yaml:"api_key"`
	// APIKeyFile is a file holding the credential, relative to the config
	// file's directory; read when the sink is built, surrounding space
	// and a trailing newline ignored. A reload rebuilds the sink when
	// the file's content changed.
	APIKeyFile string `yaml:"api_key_file"`
}

// Validate reports a missing or unusable url and a credential that is
// missing or given twice. It is pure: the key file is read at build.
func (c *PresetConfig) Validate() error {
	var errs []error
	if err := validateBaseURL("url", c.URL); err != nil {
		errs = append(errs, err)
	}
	switch {
	case c.APIKey == "" && c.APIKeyFile == "":
		errs = append(errs, pipeline.FieldErr("api_key", "is required (or api_key_file)"))
	case c.APIKey != "" && c.APIKeyFile != "":
		errs = append(errs, pipeline.FieldErr("api_key_file", "conflicts with api_key: set one of them"))
	case strings.ContainsAny(c.APIKey, "\r\n\x00"):
		errs = append(errs, pipeline.FieldErr("api_key", "holds a line break or NUL"))
	}
	return errors.Join(errs...)
}

// validateBaseURL checks a vendor base URL: absolute http(s) with a host,
// without a query or fragment (the preset appends a path to it).
func validateBaseURL(field, raw string) error {
	if err := validateURL(field, raw); err != nil {
		return err
	}
	u, _ := url.Parse(raw)
	if u.RawQuery != "" || u.Fragment != "" {
		return pipeline.FieldErr(field, "must be a base URL without ?query or #fragment (the preset adds the API path)")
	}
	return nil
}

// preset is the built, shared part of a vendor sink.
type preset struct {
	vendor string
	base   *url.URL
	key    string
	client *http.Client
	log    *slog.Logger
	name   string

	skipped metric.Int64Counter

	// paceMu guards pausedUntil: a vendor that limits the API key (a 429
	// with Retry-After) slows every request of the sink, not only the
	// one that was refused.
	paceMu      sync.Mutex
	pausedUntil time.Time
}

// newPreset builds the shared part: the credential (read from
// api_key_file if set), the base URL and the client.
func newPreset(vendor string, c *PresetConfig, env pipeline.Env) (*preset, error) {
	key := c.APIKey
	if c.APIKeyFile != "" {
		b, err := env.ReadFile(c.APIKeyFile)
		if err != nil {
			return nil, fmt.Errorf("api_key_file: %w", redact.Error(err))
		}
		key = strings.TrimSpace(string(b))
		if key == "" {
			return nil, fmt.Errorf("api_key_file: %s is empty", env.Path(c.APIKeyFile))
		}
		if strings.ContainsAny(key, "\r\n\x00") {
			return nil, fmt.Errorf("api_key_file: %s holds more than one line", env.Path(c.APIKeyFile))
		}
	}
	base, err := url.Parse(c.URL)
	if err != nil {
		return nil, fmt.Errorf("url: %w", unwrapURLError(err))
	}
	log := env.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	mp := env.MeterProvider
	if mp == nil {
		mp = metricnoop.NewMeterProvider()
	}
	skipped, err := mp.Meter("github.com/labelpipe/labelpipe/sinks").Int64Counter("labelpipe.sink.elements.skipped",
		metric.WithDescription("Issue elements a vendor preset did not send, by sink and reason (no_image, no_labels, no_key)."))
	if err != nil {
		return nil, fmt.Errorf("skipped counter: %w", err)
	}
	return &preset{vendor: vendor, base: base, key: key, client: newClient(env), log: log, name: env.Name, skipped: skipped}, nil
}

// endpoint is the base URL with the API path appended: a proxy's path
// prefix in the base is kept. path is unescaped; each segment is escaped.
func (p *preset) endpoint(path string) *url.URL {
	u := *p.base
	u.Path = strings.TrimSuffix(u.Path, "/") + path
	u.RawPath = ""
	if p.base.RawPath != "" {
		u.RawPath = strings.TrimSuffix(p.base.RawPath, "/") + (&url.URL{Path: path}).EscapedPath()
	}
	return &u
}

// Skip reasons, the reason attribute of labelpipe.sink.elements.skipped.
const (
	SkipNoImage  = "no_image"
	SkipNoLabels = "no_labels"
	// SkipNoKey: the element has no usable vendor key (Labelbox: a
	// frame_id that is empty or over 200 characters).
	SkipNoKey = "no_key"
)

// skips collects the elements one Render leaves out, so that a large
// lidar-only export is one log line per reason, not one per element.
type skips struct {
	p     *preset
	issue string
	ids   map[string][]string // element ids by reason
}

// skips starts collecting the elements of issueID left out; flush
// records them.
func (p *preset) skips(issueID string) *skips {
	return &skips{p: p, issue: issueID, ids: map[string][]string{}}
}

// add notes that el is not sent to this vendor, and why.
func (s *skips) add(el *Element, reason string) {
	s.ids[reason] = append(s.ids[reason], el.ID)
}

// flush logs each reason once, with the first element ids, and counts
// them in labelpipe.sink.elements.skipped.
func (s *skips) flush(ctx context.Context) {
	for _, reason := range slices.Sorted(maps.Keys(s.ids)) {
		ids := s.ids[reason]
		s.p.log.InfoContext(ctx, "elements skipped for this vendor", "vendor", s.p.vendor, "issue_id", s.issue,
			"reason", reason, "count", len(ids), "element_ids", ids[:min(len(ids), 10)])
		s.p.skipped.Add(ctx, int64(len(ids)), metric.WithAttributes(attribute.String("sink", s.p.name), attribute.String("reason", reason)))
	}
}

// hold waits until the vendor's pause (see pause) is over, or returns a
// retryable error when the attempt would end first.
func (p *preset) hold(ctx context.Context) error {
	p.paceMu.Lock()
	until := p.pausedUntil
	p.paceMu.Unlock()
	d := time.Until(until)
	if d <= 0 {
		return nil
	}
	if dl, ok := ctx.Deadline(); ok && dl.Before(until) {
		return &pipeline.DeliveryError{Retry: true, After: d,
			Msg: fmt.Sprintf("%s asked this API key to wait %s (rate limited); not sent", p.vendor, d.Round(time.Millisecond))}
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return &pipeline.DeliveryError{Retry: true, Msg: fmt.Sprintf("waiting out %s's rate limit: %v", p.vendor, context.Cause(ctx))}
	}
}

// pause makes every request of the sink wait d from now (a 429's
// Retry-After applies to the API key, not only to the refused request).
func (p *preset) pause(d time.Duration) {
	if d <= 0 {
		return
	}
	until := time.Now().Add(d)
	p.paceMu.Lock()
	if until.After(p.pausedUntil) {
		p.pausedUntil = until
	}
	p.paceMu.Unlock()
}

// paceFrom pauses the sink when err is a rate limit (429) with a
// Retry-After, and returns err.
func (p *preset) paceFrom(err error) error {
	var de *pipeline.DeliveryError
	if errors.As(err, &de) && de.Status == http.StatusTooManyRequests {
		p.pause(de.After)
	}
	return err
}

// newPost is a JSON POST of body to the API path, with the common headers;
// the preset sets its own auth.
func (p *preset) newPost(ctx context.Context, path string, body []byte) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.endpoint(path).String(), bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	setHeaders(req, nil)
	return req, nil
}

// describeBuilt is a preset's Describe of the request build makes.
func describeBuilt(req *http.Request, err error, body []byte) map[string]any {
	if err != nil {
		return map[string]any{"error": err.Error()}
	}
	return describe(req, body)
}

// describe is a preset's preview of one request, secrets redacted.
func describe(req *http.Request, body []byte) map[string]any {
	return map[string]any{
		"method":  req.Method,
		"url":     describeURL(req.URL),
		"headers": redactHeaders(req.Header),
		"body":    describeBody(body),
	}
}

// perMinute is a rate limit of n requests a minute, with a burst of a
// second's worth (at least 1).
func perMinute(n float64) resilience.RateLimit {
	return resilience.RateLimit{PerSecond: n / 60, Burst: max(1, int(n/60))}
}

// Issue is what the presets read of an issue-exported payload.
type Issue struct {
	// ID is issue.id; Project is the Aquarium project's name.
	ID, Project string
	// Elements are issue.elements, in order.
	Elements []Element
}

// Element is one issue element as the presets read it.
type Element struct {
	// ID is element_id; Type is element_type (frame or crop).
	ID, Type string
	// FrameID is frame_id (Labelbox's global key); Dataset the element's
	// dataset; IssueName its issue_name.
	FrameID, Dataset, IssueName string
	// Image is the image_url of the first sensor_data entry that has one
	// (see ImageURL); "" for a frame without an image (lidar only).
	Image string
	// Labels are the element's label classes, sorted, each once; for a
	// crop only the class of the label it points at (uuid == element_id).
	Labels []string
}

// ReadIssue reads the issue of an issue-exported payload (a decoded JSON
// value). It fails only when there is no issue object; missing fields of
// an element are left empty.
func ReadIssue(payload any) (Issue, error) {
	m, _ := payload.(map[string]any)
	issue, ok := m["issue"].(map[string]any)
	if !ok {
		return Issue{}, errors.New("payload has no issue object")
	}
	out := Issue{ID: str(issue["id"]), Project: str(m["project"])}
	els, _ := issue["elements"].([]any)
	for _, e := range els {
		em, _ := e.(map[string]any)
		if em == nil {
			continue
		}
		fd, _ := em["frame_data"].(map[string]any)
		el := Element{ID: str(em["element_id"]), Type: str(em["element_type"]), FrameID: str(em["frame_id"]),
			Dataset: str(em["dataset"]), IssueName: str(em["issue_name"]), Image: ImageURL(fd)}
		el.Labels = labelClasses(fd, el.Type, el.ID)
		out.Elements = append(out.Elements, el)
	}
	return out, nil
}

// ImageURL is the image of a frame (frame_data): the data_urls.image_url
// of the first sensor_data entry that has one, which need not be the first
// entry (a point cloud often comes first). "" when none has one.
func ImageURL(frameData map[string]any) string {
	sensors, _ := frameData["sensor_data"].([]any)
	for _, s := range sensors {
		sm, _ := s.(map[string]any)
		urls, _ := sm["data_urls"].(map[string]any)
		if u := str(urls["image_url"]); u != "" {
			return u
		}
	}
	return ""
}

// labelClasses are the label classes of a frame, sorted and each once; for
// a crop, only the class of the label whose uuid is the element id.
func labelClasses(frameData map[string]any, elementType, elementID string) []string {
	labels, _ := frameData["label_data"].([]any)
	seen := map[string]bool{}
	var out []string
	for _, l := range labels {
		lm, _ := l.(map[string]any)
		if elementType == "crop" && str(lm["uuid"]) != elementID {
			continue
		}
		if c := str(lm["label"]); c != "" && !seen[c] {
			seen[c] = true
			out = append(out, c)
		}
	}
	slices.Sort(out)
	return out
}

func str(v any) string { s, _ := v.(string); return s }

// unexpanded is a ${VAR} left as written for a preview.
var unexpanded = regexp.MustCompile(`^\$\{[A-Za-z_][A-Za-z0-9_]*\}$`)

// numericProjectID checks a project_id that must be the vendor's numeric
// id (Label Studio, CVAT); nil when it is. A value still standing for its
// variable (a preview, validate --no-env) passes: only its presence is
// known.
func numericProjectID(id string) error {
	switch id = strings.TrimSpace(id); {
	case id == "":
		return pipeline.FieldErr("project_id", "is required")
	case unexpanded.MatchString(id), pipeline.IsEnvPlaceholder(id):
		return nil
	}
	if n, err := strconv.Atoi(id); err != nil || n < 1 {
		return pipeline.FieldErr("project_id", "must be the project's numeric id")
	}
	return nil
}
