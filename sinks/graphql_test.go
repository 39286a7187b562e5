package sinks_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/sinks"
)

const batchMutation = `mutation($projectId: ID!, $input: CreateBatchV2Input!) {
  project(where: {id: $projectId}) { createBatchV2(input: $input) { batch { id } failedDataRowIds } }
}`

func newGraphQLSink(t *testing.T, url string, mut func(*sinks.GraphQLConfig)) *sinks.GraphQL {
	t.Helper()
	c := sinks.GraphQLDefaults()
	c.URL = url
	c.Query = batchMutation
	c.Headers = map[string]string{"Authorization": "Bearer lb-key"}
	if mut != nil {
		mut(c)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	s, err := sinks.NewGraphQL(c, pipeline.Env{Name: "labelbox"})
	if err != nil {
		t.Fatalf("NewGraphQL: %v", err)
	}
	return s
}

func gqlErrors(entries ...string) string {
	return `{"data":null,"errors":[` + strings.Join(entries, ",") + `]}`
}

func gqlErr(code, msg string) string {
	b, _ := json.Marshal(map[string]any{"message": msg, "extensions": map[string]any{"code": code}})
	return string(b)
}

func TestGraphQLClassification(t *testing.T) {
	tests := []struct {
		name        string
		status      int
		body        string
		alreadyDone string
		extra       []string // retryable_codes
		wantErr     bool
		retry       bool
		msgHas      string
	}{
		{name: "data", status: 200, body: `{"data":{"project":{"createBatchV2":{"batch":{"id":"b1"}}}}}`},
		{name: "empty errors", status: 200, body: `{"data":{},"errors":[]}`},
		{name: "authentication", status: 200, body: gqlErrors(gqlErr("AUTHENTICATION_ERROR", "Invalid API key")), wantErr: true, msgHas: "AUTHENTICATION_ERROR"},
		{name: "authorization", status: 200, body: gqlErrors(gqlErr("AUTHORIZATION_ERROR", "not allowed")), wantErr: true, msgHas: "not allowed"},
		{name: "validation", status: 200, body: gqlErrors(gqlErr("GRAPHQL_VALIDATION_FAILED", `Cannot query field "x"`)), wantErr: true, msgHas: "GRAPHQL_VALIDATION_FAILED"},
		{name: "malformed", status: 200, body: gqlErrors(gqlErr("MALFORMED_REQUEST", "bad")), wantErr: true},
		{name: "bad user input", status: 200, body: gqlErrors(gqlErr("BAD_USER_INPUT", "globalKeys too long")), wantErr: true},
		{name: "unknown code", status: 200, body: gqlErrors(gqlErr("SOMETHING_NEW", "eh")), wantErr: true, msgHas: "SOMETHING_NEW"},
		{name: "no code", status: 200, body: gqlErrors(`{"message":"plain"}`), wantErr: true, msgHas: "plain"},
		{name: "internal", status: 200, body: gqlErrors(gqlErr("INTERNAL_SERVER_ERROR", "oops")), wantErr: true, retry: true, msgHas: `"oops"`},
		{name: "rate limited by message", status: 200, body: gqlErrors(gqlErr("UNKNOWN", "You have exceeded the rate limit of 1500 requests per minute")), wantErr: true, retry: true},
		{name: "rate limited by code", status: 200, body: gqlErrors(gqlErr("RATE_LIMITED", "slow down")), wantErr: true, retry: true},
		{name: "extra retryable code", status: 200, body: gqlErrors(gqlErr("TRY_LATER", "busy")), extra: []string{"TRY_LATER"}, wantErr: true, retry: true},
		{name: "one permanent among retryable", status: 200, body: gqlErrors(gqlErr("INTERNAL_SERVER_ERROR", "a"), gqlErr("AUTHORIZATION_ERROR", "b")), wantErr: true, msgHas: "AUTHORIZATION_ERROR"},
		{name: "already done", status: 200, body: gqlErrors(gqlErr("BAD_USER_INPUT", `Batch with name "aq-1" already exists in this project`)), alreadyDone: "already exists"},
		{name: "already done ignored without option", status: 200, body: gqlErrors(gqlErr("BAD_USER_INPUT", "Batch already exists")), wantErr: true},
		{name: "already done and another error", status: 200, body: gqlErrors(gqlErr("BAD_USER_INPUT", "already exists"), gqlErr("INTERNAL_SERVER_ERROR", "x")), alreadyDone: "already exists", wantErr: true, retry: true},
		{name: "http 503", status: 503, body: `upstream down`, wantErr: true, retry: true},
		{name: "http 400 with errors", status: 400, body: gqlErrors(gqlErr("GRAPHQL_PARSE_FAILED", "Syntax Error")), wantErr: true, msgHas: "Syntax Error"},
		{name: "http 429", status: 429, body: `{}`, wantErr: true, retry: true},
		{name: "not json", status: 200, body: `<html>login</html>`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := newVendor(t, answer{status: tt.status, body: tt.body, header: map[string]string{"Content-Type": "application/json"}})
			s := newGraphQLSink(t, v.URL+"/graphql", func(c *sinks.GraphQLConfig) {
				c.AlreadyDone = tt.alreadyDone
				c.RetryableCodes = tt.extra
			})
			err := s.Send(t.Context(), request(`{"query":"q","variables":{}}`))
			if !tt.wantErr {
				if err != nil {
					t.Fatalf("Send = %v, want success", err)
				}
				return
			}
			de := deliveryError(t, err)
			if de.Retry != tt.retry || de.Status != tt.status {
				t.Fatalf("DeliveryError %+v: want status %d retry %v", de, tt.status, tt.retry)
			}
			if !strings.Contains(de.Msg, tt.msgHas) || de.Answer == "" {
				t.Fatalf("msg %q should contain %q, answer %q the vendor's answer", de.Msg, tt.msgHas, de.Answer)
			}
		})
	}
}

func TestGraphQLRateLimitRetryAfter(t *testing.T) {
	v := newVendor(t, answer{status: 200, header: map[string]string{"Retry-After": "7"},
		body: gqlErrors(gqlErr("RATE_LIMITED", "You have exceeded the rate limit"))})
	s := newGraphQLSink(t, v.URL, nil)
	de := deliveryError(t, s.Send(t.Context(), request(`{}`)))
	if !de.Retry || de.After != 7*time.Second {
		t.Fatalf("rate limit: %+v, want retryable after 7s", de)
	}
}

func TestGraphQLRender(t *testing.T) {
	s := newGraphQLSink(t, "https://api.labelbox.com/graphql", func(c *sinks.GraphQLConfig) {
		c.Variables = `.issue.elements as $e | range(0; $e | length; 2) as $i |
		  {projectId: "p1", input: {name: "aq-\($export.issue_id)-\($i / 2)", globalKeys: [$e[$i:$i+2][].frame_id]}}`
	})
	elems := []any{}
	for _, id := range []string{"f1", "f2", "f3", "f4", "f5"} {
		elems = append(elems, map[string]any{"frame_id": id})
	}
	bodies, err := s.Render(t.Context(), map[string]any{"issue": map[string]any{"elements": elems}}, map[string]any{"issue_id": "i9"})
	if err != nil {
		t.Fatal(err)
	}
	if len(bodies) != 3 {
		t.Fatalf("%d bodies, want 3 chunks of ≤2 keys", len(bodies))
	}
	var first struct {
		Query     string         `json:"query"`
		Variables map[string]any `json:"variables"`
	}
	if err := json.Unmarshal(bodies[0], &first); err != nil {
		t.Fatalf("body %s: %v", bodies[0], err)
	}
	if first.Query != batchMutation {
		t.Errorf("query = %q", first.Query)
	}
	input := first.Variables["input"].(map[string]any)
	if input["name"] != "aq-i9-0" || len(input["globalKeys"].([]any)) != 2 || first.Variables["projectId"] != "p1" {
		t.Errorf("variables = %v", first.Variables)
	}

	def := newGraphQLSink(t, "https://api.labelbox.com/graphql", nil)
	one, err := def.Render(t.Context(), map[string]any{}, nil)
	if err != nil || len(one) != 1 || !strings.HasSuffix(string(one[0]), `"variables":{}}`) {
		t.Fatalf("default variables: %s, %v; want one request with {}", one, err)
	}

	bad := newGraphQLSink(t, "https://api.labelbox.com/graphql", func(c *sinks.GraphQLConfig) { c.Variables = `[1,2]` })
	if _, err := bad.Render(t.Context(), map[string]any{}, nil); err == nil || !strings.Contains(err.Error(), "want an object") {
		t.Fatalf("array variables: %v, want an error", err)
	}
}

func TestGraphQLDescribe(t *testing.T) {
	s := newGraphQLSink(t, "https://api.labelbox.com/graphql", nil)
	d := s.Describe(request(`{"query":"q","variables":{}}`))
	h := d["headers"].(map[string]string)
	if h["Authorization"] != "REDACTED" || d["method"] != "POST" || d["url"] != "https://api.labelbox.com/graphql" {
		t.Fatalf("describe = %v", d)
	}
}

func TestGraphQLValidate(t *testing.T) {
	tests := []struct {
		name  string
		mut   func(*sinks.GraphQLConfig)
		field string
	}{
		{"missing query", func(c *sinks.GraphQLConfig) { c.Query = "  " }, "query"},
		{"missing url", func(c *sinks.GraphQLConfig) { c.URL = "" }, "url"},
		{"bad variables", func(c *sinks.GraphQLConfig) { c.Variables = "{" }, "variables"},
		{"bad already_done", func(c *sinks.GraphQLConfig) { c.AlreadyDone = "(" }, "already_done"},
		{"empty retryable code", func(c *sinks.GraphQLConfig) { c.RetryableCodes = []string{""} }, "retryable_codes[0]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := sinks.GraphQLDefaults()
			c.URL = "https://api.labelbox.com/graphql"
			c.Query = batchMutation
			tt.mut(c)
			var fe *pipeline.FieldError
			if err := c.Validate(); !errors.As(err, &fe) || fe.Field != tt.field {
				t.Fatalf("Validate = %v, want a field error on %s", err, tt.field)
			}
		})
	}
}
