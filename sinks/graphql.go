package sinks

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/itchyny/gojq"

	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/pipeline/redact"
)

// GraphQLConfig configures the graphql sink. It sends one GraphQL request
// per value of its variables program, with a fixed query. GraphQL servers
// (Labelbox) report errors with HTTP 200 and an errors[] array; the sink
// treats a non-empty errors[] as a failure and classifies it by
// extensions.code.
//
//   - name: labelbox
//     type: graphql
//     url: https://api.labelbox.com/graphql
//     headers: {Authorization: "Bearer ${LABELBOX_API_KEY}"}
//     query: |
//     mutation($projectId: ID!, $input: CreateBatchV2Input!) {
//     project(where: {id: $projectId}) { createBatchV2(input: $input) { batch { id } failedDataRowIds } } }
//     variables: '{projectId: "clx...", input: {name: "aquarium-\($export.issue_id)", globalKeys: [.issue.elements[].frame_id]}}'
//     already_done: already exists   # the batch name is taken: an earlier attempt got through
type GraphQLConfig struct {
	// URL is the absolute http(s) GraphQL endpoint. Required.
	URL string `yaml:"url"`
	// Headers are sent with every request; values may hold secrets and
	// are redacted in preview.
	Headers map[string]string `yaml:"headers"`
	// Query is the GraphQL document (usually a mutation). Required.
	Query string `yaml:"query"`
	// Variables is a jq program; each object it yields is one request's
	// variables. Default `{}` (one request without variables).
	Variables string `yaml:"variables"`
	// AlreadyDone is a regular expression over error messages: errors it
	// matches mean an earlier attempt already did the work (Labelbox:
	// "already exists" for a batch name), so the request is delivered.
	AlreadyDone string `yaml:"already_done"`
	// RetryableCodes adds extensions.code values worth retrying to the
	// built-in INTERNAL_SERVER_ERROR, RATE_LIMITED and the like. Other
	// codes, and errors without one, are permanent.
	RetryableCodes []string `yaml:"retryable_codes"`
}

// GraphQLDefaults returns the graphql sink's defaults.
func GraphQLDefaults() *GraphQLConfig {
	return &GraphQLConfig{Variables: "{}"}
}

// Validate reports every invalid option.
func (c *GraphQLConfig) Validate() error {
	var errs []error
	if err := validateURL("url", c.URL); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, validateHeaders("headers", c.Headers)...)
	if strings.TrimSpace(c.Query) == "" {
		errs = append(errs, pipeline.FieldErr("query", "is required"))
	}
	if _, err := pipeline.CompileJQ(c.Variables); err != nil {
		errs = append(errs, pipeline.FieldErr("variables", "%v", err))
	}
	if c.AlreadyDone != "" {
		if _, err := regexp.Compile(c.AlreadyDone); err != nil {
			errs = append(errs, pipeline.FieldErr("already_done", "invalid regular expression: %v", err))
		}
	}
	for i, code := range c.RetryableCodes {
		if code == "" {
			errs = append(errs, pipeline.FieldErr(fmt.Sprintf("retryable_codes[%d]", i), "is empty"))
		}
	}
	return errors.Join(errs...)
}

// graphqlAnswerLimit bounds how much of an answer is read to find errors[].
const graphqlAnswerLimit = 8 << 20

// retryableCodes are GraphQL error codes another attempt may get past.
var retryableCodes = []string{"INTERNAL_SERVER_ERROR", "RATE_LIMITED", "RATE_LIMIT_EXCEEDED", "TOO_MANY_REQUESTS", "SERVICE_UNAVAILABLE"}

// rateLimitMessage is how Labelbox words a rate limit.
const rateLimitMessage = "you have exceeded"

// GraphQL is a built graphql sink.
type GraphQL struct {
	cfg         GraphQLConfig
	variables   *pipeline.JQ
	queryJSON   []byte // `{"query":"...","variables":`, encoded once
	alreadyDone *regexp.Regexp
	retryable   map[string]bool
	client      *http.Client
}

// NewGraphQL builds a graphql sink from a validated config.
func NewGraphQL(c *GraphQLConfig, env pipeline.Env) (*GraphQL, error) {
	vars, err := pipeline.CompileJQ(c.Variables)
	if err != nil {
		return nil, fmt.Errorf("variables: %w", err)
	}
	s := &GraphQL{cfg: *c, variables: vars, client: newClient(env), retryable: map[string]bool{}}
	if c.AlreadyDone != "" {
		if s.alreadyDone, err = regexp.Compile(c.AlreadyDone); err != nil {
			return nil, fmt.Errorf("already_done: %w", err)
		}
	}
	for _, code := range slices.Concat(retryableCodes, c.RetryableCodes) {
		s.retryable[strings.ToUpper(code)] = true
	}
	var buf bytes.Buffer
	buf.WriteString(`{"query":`)
	if err := encodeJSON(&buf, c.Query); err != nil {
		return nil, fmt.Errorf("query: %w", err)
	}
	buf.WriteString(`,"variables":`)
	s.queryJSON = buf.Bytes()
	return s, nil
}

// Render runs the variables program: one request per value, each
// {"query": query, "variables": value}.
func (s *GraphQL) Render(ctx context.Context, payload any, export map[string]any) ([][]byte, error) {
	vs, err := s.variables.Run(ctx, payload, export)
	if err != nil {
		return nil, err
	}
	out := make([][]byte, len(vs))
	for i, v := range vs {
		switch v.(type) {
		case map[string]any, nil:
		default:
			return nil, fmt.Errorf("variables value %d is %s, want an object", i, jqType(v))
		}
		vars, _ := gojq.Marshal(v) // never fails: jq only yields JSON values
		b := make([]byte, 0, len(s.queryJSON)+len(vars)+1)
		out[i] = append(append(append(b, s.queryJSON...), vars...), '}')
	}
	return out, nil
}

func jqType(v any) string {
	switch v.(type) {
	case []any:
		return "an array"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	default:
		return "a number"
	}
}

// Send makes one attempt.
func (s *GraphQL) Send(ctx context.Context, r *pipeline.Request) error {
	req, err := s.request(ctx, r)
	if err != nil {
		return &pipeline.DeliveryError{Msg: fmt.Sprintf("build request: %v", redact.Error(err))}
	}
	resp, err := send(ctx, s.client, req, graphqlAnswerLimit)
	if err != nil {
		return err
	}
	var ans struct {
		Errors []gqlError `json:"errors"`
	}
	parsed := json.Unmarshal(resp.body, &ans) == nil
	ok := resp.status >= 200 && resp.status < 300
	if parsed && len(ans.Errors) > 0 {
		if s.allDone(ans.Errors) && resp.status < 500 {
			return nil // an earlier attempt did it
		}
		if ok {
			return s.graphqlError(req, resp, ans.Errors)
		}
	}
	if !ok {
		return statusError(req, resp, retryableStatus(resp.status))
	}
	if !parsed {
		return &pipeline.DeliveryError{Status: resp.status, Msg: fmt.Sprintf("POST %s: answer is not GraphQL JSON", redact.URL(req.URL)), Answer: answer(resp.body)}
	}
	return nil
}

// gqlError is one entry of a GraphQL errors[] array.
type gqlError struct {
	Message    string `json:"message"`
	Code       string `json:"code"` // some servers put it here
	Extensions struct {
		Code string `json:"code"`
	} `json:"extensions"`
}

func (e gqlError) code() string {
	if e.Extensions.Code != "" {
		return e.Extensions.Code
	}
	return e.Code
}

func (s *GraphQL) done(e gqlError) bool {
	return s.alreadyDone != nil && s.alreadyDone.MatchString(e.Message)
}

func (s *GraphQL) allDone(errs []gqlError) bool {
	for _, e := range errs {
		if !s.done(e) {
			return false
		}
	}
	return true
}

func (s *GraphQL) retryableErr(e gqlError) bool {
	return s.retryable[strings.ToUpper(e.code())] || strings.Contains(strings.ToLower(e.Message), rateLimitMessage)
}

// graphqlError classifies errors[] that came with a 2xx: permanent if any
// error is, retryable if all are.
func (s *GraphQL) graphqlError(req *http.Request, resp *response, errs []gqlError) error {
	var first *gqlError
	retry := true
	for i := range errs {
		if s.done(errs[i]) {
			continue
		}
		if first == nil {
			first = &errs[i]
		}
		if !s.retryableErr(errs[i]) {
			retry = false
			first = &errs[i] // name the error that makes it permanent
			break
		}
	}
	code := first.code()
	if code == "" {
		code = "no code"
	}
	msg := fmt.Sprintf("POST %s: graphql error %s: %s", redact.URL(req.URL), code, strconv.Quote(clip(first.Message, 300)))
	if len(errs) > 1 {
		msg += fmt.Sprintf(" (and %d more)", len(errs)-1)
	}
	return deliveryError(resp, retry, msg)
}

func (s *GraphQL) request(ctx context.Context, r *pipeline.Request) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.cfg.URL, bytes.NewReader(r.Body))
	if err != nil {
		return nil, err
	}
	setHeaders(req, s.cfg.Headers)
	return req, nil
}

// Describe says what Send would do with r, secrets redacted.
func (s *GraphQL) Describe(r *pipeline.Request) map[string]any {
	req, err := s.request(context.Background(), r)
	if err != nil {
		return map[string]any{"error": err.Error()}
	}
	return map[string]any{
		"method":  http.MethodPost,
		"url":     describeURL(req.URL),
		"headers": redactHeaders(req.Header),
		"body":    describeBody(r.Body),
	}
}

var (
	_ pipeline.Sink      = (*GraphQL)(nil)
	_ pipeline.Describer = (*GraphQL)(nil)
)
