package sinks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"golang.org/x/net/http/httpguts"

	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/pipeline/redact"
)

// HTTPConfig configures the http sink. It sends each value of its body
// program as one JSON request to a REST API: Scale's task and batch
// endpoints, Label Studio's import, CVAT, or any webhook.
//
//   - name: scale
//     type: http
//     url: https://api.scale.com/v1/task/imageannotation
//     basic_auth: {username: "${SCALE_API_KEY}"}
//     conflict_is_success: true   # unique_id already used: an earlier attempt got through
//     body: |
//     .issue.elements[] | {project: "relabel", attachment: .frame_data.sensor_data[0].data_urls.image_url,
//     unique_id: "\($export.issue_id).\(.element_id)", geometries: {box: {objects_to_annotate: ["car"]}}}
type HTTPConfig struct {
	// Method is the HTTP method; default POST.
	Method string `yaml:"method"`
	// URL is the absolute http(s) URL to send to. Required.
	URL string `yaml:"url"`
	// Headers are sent with every request; values may hold secrets
	// (${VAR}) and are redacted in preview. Content-Type defaults to
	// application/json.
	Headers map[string]string `yaml:"headers"`
	// BasicAuth sends HTTP basic credentials (Scale: the API key as the
	// username and an empty password).
	BasicAuth *BasicAuth `yaml:"basic_auth"`
	// Body is a jq program; each value it yields is one request's JSON
	// body. Default `.` (the payload as is).
	Body string `yaml:"body"`
	// IdempotencyHeader, when set, names a header that carries the
	// request's idempotency key (stable across retries and redeliveries).
	IdempotencyHeader string `yaml:"idempotency_header"`
	// ConflictIsSuccess treats 409 Conflict as delivered: the vendor has
	// already seen this idempotency key (Scale's unique_id), so an earlier
	// attempt got through.
	ConflictIsSuccess bool `yaml:"conflict_is_success"`
	// SuccessStatus lists the statuses that mean delivered; default any
	// 2xx.
	SuccessStatus []int `yaml:"success_status"`
}

// HTTPDefaults returns the http sink's defaults.
func HTTPDefaults() *HTTPConfig {
	return &HTTPConfig{Method: http.MethodPost, Body: "."}
}

// httpMethods are the methods that carry a body.
var httpMethods = []string{http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete}

// Validate reports every invalid option.
func (c *HTTPConfig) Validate() error {
	var errs []error
	if !slices.Contains(httpMethods, c.Method) {
		errs = append(errs, pipeline.FieldErr("method", "must be one of %s", strings.Join(httpMethods, ", ")))
	}
	if err := validateURL("url", c.URL); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, validateHeaders("headers", c.Headers)...)
	if c.BasicAuth != nil {
		for k := range c.Headers {
			if strings.EqualFold(k, "Authorization") {
				errs = append(errs, pipeline.FieldErr("basic_auth", "conflicts with headers.%s: set one of them", k))
			}
		}
	}
	if _, err := pipeline.CompileJQ(c.Body); err != nil {
		errs = append(errs, pipeline.FieldErr("body", "%v", err))
	}
	if c.IdempotencyHeader != "" && !httpguts.ValidHeaderFieldName(c.IdempotencyHeader) {
		errs = append(errs, pipeline.FieldErr("idempotency_header", "%q is not a valid header name", c.IdempotencyHeader))
	}
	for i, s := range c.SuccessStatus {
		if s < 100 || s > 599 {
			errs = append(errs, pipeline.FieldErr(fmt.Sprintf("success_status[%d]", i), "%d is not an HTTP status", s))
		}
	}
	return errors.Join(errs...)
}

// HTTP is a built http sink.
type HTTP struct {
	cfg    HTTPConfig
	body   *pipeline.JQ
	client *http.Client
}

// NewHTTP builds an http sink from a validated config.
func NewHTTP(c *HTTPConfig, env pipeline.Env) (*HTTP, error) {
	body, err := pipeline.CompileJQ(c.Body)
	if err != nil {
		return nil, fmt.Errorf("body: %w", err)
	}
	return &HTTP{cfg: *c, body: body, client: newClient(env)}, nil
}

// Render runs the body program: one request per value.
func (s *HTTP) Render(ctx context.Context, payload any, export map[string]any) ([][]byte, error) {
	return s.body.JSON(ctx, payload, export)
}

// Send makes one attempt.
func (s *HTTP) Send(ctx context.Context, r *pipeline.Request) error {
	req, err := s.request(ctx, r)
	if err != nil {
		return &pipeline.DeliveryError{Msg: fmt.Sprintf("build request: %v", redact.Error(err))}
	}
	resp, err := send(ctx, s.client, req, answerLimit)
	if err != nil {
		return err
	}
	if s.success(resp.status) {
		return nil
	}
	if resp.status == http.StatusConflict && s.cfg.ConflictIsSuccess {
		return nil // the idempotency key was used: an earlier attempt succeeded
	}
	retry := retryableStatus(resp.status)
	de := statusError(req, resp, retry)
	if resp.status >= 200 && resp.status < 300 {
		de.Msg += " (not in success_status)"
	}
	return de
}

func (s *HTTP) success(status int) bool {
	if len(s.cfg.SuccessStatus) > 0 {
		return slices.Contains(s.cfg.SuccessStatus, status)
	}
	return status >= 200 && status < 300
}

func (s *HTTP) request(ctx context.Context, r *pipeline.Request) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, s.cfg.Method, s.cfg.URL, bytes.NewReader(r.Body))
	if err != nil {
		return nil, err
	}
	setHeaders(req, s.cfg.Headers)
	if s.cfg.BasicAuth != nil {
		req.SetBasicAuth(s.cfg.BasicAuth.Username, s.cfg.BasicAuth.Password)
	}
	if s.cfg.IdempotencyHeader != "" {
		req.Header.Set(s.cfg.IdempotencyHeader, r.IdempotencyKey())
	}
	return req, nil
}

// Describe says what Send would do with r, secrets redacted.
func (s *HTTP) Describe(r *pipeline.Request) map[string]any {
	req, err := s.request(context.Background(), r)
	if err != nil {
		return map[string]any{"error": err.Error()}
	}
	headers := redactHeaders(req.Header)
	if s.cfg.IdempotencyHeader != "" { // not a secret, and worth seeing
		headers[http.CanonicalHeaderKey(s.cfg.IdempotencyHeader)] = r.IdempotencyKey()
	}
	return map[string]any{
		"method":  s.cfg.Method,
		"url":     describeURL(req.URL),
		"headers": headers,
		"body":    describeBody(r.Body),
	}
}

var (
	_ pipeline.Sink      = (*HTTP)(nil)
	_ pipeline.Describer = (*HTTP)(nil)
)
