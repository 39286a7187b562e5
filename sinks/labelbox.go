package sinks

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/pipeline/redact"
	"github.com/labelpipe/labelpipe/pipeline/resilience"
)

// LabelboxConfig configures the labelbox preset. It queues an export's
// frames for labeling in a Labelbox project: one createBatchV2 per
// 100,000 frames, with the export's unique frame_ids, sorted, as global
// keys.
//
//   - name: labelbox
//     type: labelbox
//     api_key: ${LABELBOX_API_KEY}       # Authorization: Bearer
//     project_id: ${LABELBOX_PROJECT_ID}
//
// The batch name, aquarium-<issue id>-<export key>-<chunk>, is the
// idempotency key: batch names are unique per project, so a retry, or the
// same export accepted again, is answered "already exists", which counts
// as delivered. An element without an image (a lidar-only frame) or
// without a frame_id is not queued; it is logged and counted.
type LabelboxConfig struct {
	// PresetConfig holds url (default https://api.labelbox.com; the
	// preset adds /graphql), api_key and api_key_file.
	PresetConfig `yaml:",inline"`
	// ProjectID is the Labelbox project to queue the frames in. Required.
	ProjectID string `yaml:"project_id"`
	// Priority is the batch priority, 1 (highest) to 5; default 5.
	Priority int `yaml:"priority"`
}

// LabelboxDefaults returns the labelbox preset's defaults.
func LabelboxDefaults() *LabelboxConfig {
	return &LabelboxConfig{PresetConfig: PresetConfig{URL: "https://api.labelbox.com"}, Priority: 5}
}

// DefaultRateLimit is Labelbox's lowest documented plan limit, 1,500
// requests a minute.
func (c *LabelboxConfig) DefaultRateLimit() resilience.RateLimit { return perMinute(1500) }

// Validate reports every invalid option.
func (c *LabelboxConfig) Validate() error {
	errs := []error{c.PresetConfig.Validate()}
	if strings.TrimSpace(c.ProjectID) == "" {
		errs = append(errs, pipeline.FieldErr("project_id", "is required"))
	}
	if c.Priority < 1 || c.Priority > 5 {
		errs = append(errs, pipeline.FieldErr("priority", "must be 1 (highest) to 5"))
	}
	return errors.Join(errs...)
}

// Labelbox limits.
const (
	// LabelboxBatchRows is how many rows one batch holds.
	LabelboxBatchRows = 100_000
	// labelboxGlobalKeyLen is the longest global key.
	labelboxGlobalKeyLen = 200
)

// labelboxMutation queues global keys as a batch.
const labelboxMutation = `mutation QueueIssue($projectId: ID!, $name: String!, $globalKeys: [ID!], $priority: Int) {
  project(where: {id: $projectId}) {
    createBatchV2(input: {name: $name, globalKeys: $globalKeys, priority: $priority}) {
      batch { id }
      failedDataRowIds
    }
  }
}`

// labelboxAlreadyDone is how Labelbox words a taken batch name. Its code
// is not documented, so the message decides.
var labelboxAlreadyDone = regexp.MustCompile(`(?i)already exists`)

// labelboxPermanent are the codes no retry gets past; other codes are
// judged by labelboxRetryable, and unknown ones are permanent.
var labelboxRetryable = []string{"INTERNAL_SERVER_ERROR", "RATE_LIMITED", "RATE_LIMIT_EXCEEDED", "TOO_MANY_REQUESTS", "SERVICE_UNAVAILABLE"}

// Labelbox is a built labelbox preset.
type Labelbox struct {
	*preset
	cfg LabelboxConfig

	// mu guards retries: the global keys a batch reported failed
	// (failedDataRowIds), by the batch's name, which the next attempt
	// queues as a batch of their own.
	mu      sync.Mutex
	retries map[string]*keyRetry
}

// keyRetry is what is left to queue of a batch: keys, in retry batch
// round (name-retry<round>). A round that reports failures again moves
// the rest to the next round, so that its taken name is never mistaken
// for the rest being queued.
type keyRetry struct {
	keys  []string
	round int
}

// NewLabelbox builds a labelbox preset from a validated config.
func NewLabelbox(c *LabelboxConfig, env pipeline.Env) (*Labelbox, error) {
	p, err := newPreset("labelbox", &c.PresetConfig, env)
	if err != nil {
		return nil, err
	}
	return &Labelbox{preset: p, cfg: *c, retries: map[string]*keyRetry{}}, nil
}

// labelboxBody is the request a labelbox preset sends.
type labelboxBody struct {
	Query     string            `json:"query"`
	Variables labelboxVariables `json:"variables"`
}

type labelboxVariables struct {
	ProjectID  string   `json:"projectId"`
	Name       string   `json:"name"`
	GlobalKeys []string `json:"globalKeys"`
	Priority   int      `json:"priority"`
}

// Render is one createBatchV2 per 100,000 unique frame_ids.
func (s *Labelbox) Render(ctx context.Context, payload any, export map[string]any) ([][]byte, error) {
	iss, err := ReadIssue(payload)
	if err != nil {
		return nil, err
	}
	sk := s.skips(iss.ID)
	defer sk.flush(ctx)
	seen := map[string]bool{}
	var keys []string
	for i := range iss.Elements {
		el := &iss.Elements[i]
		switch {
		case el.Image == "":
			sk.add(el, SkipNoImage)
		case el.FrameID == "" || len(el.FrameID) > labelboxGlobalKeyLen:
			sk.add(el, SkipNoKey)
		case !seen[el.FrameID]:
			seen[el.FrameID] = true
			keys = append(keys, el.FrameID)
		}
	}
	slices.Sort(keys) // the same keys make the same batches, whatever the order
	exportKey := cmp.Or(str(export["key"]), str(export["id"]))
	var out [][]byte
	for chunk, i := 0, 0; i < len(keys); chunk, i = chunk+1, i+LabelboxBatchRows {
		body := labelboxBody{Query: labelboxMutation, Variables: labelboxVariables{
			ProjectID:  s.cfg.ProjectID,
			Name:       fmt.Sprintf("aquarium-%s-%s-%d", iss.ID, exportKey, chunk),
			GlobalKeys: keys[i:min(i+LabelboxBatchRows, len(keys))],
			Priority:   s.cfg.Priority,
		}}
		var buf bytes.Buffer
		if err := encodeJSON(&buf, body); err != nil {
			return nil, err
		}
		out = append(out, buf.Bytes())
	}
	return out, nil
}

// Send makes one attempt: the batch, or, after Labelbox reported some of
// its keys failed, a batch of those keys.
func (s *Labelbox) Send(ctx context.Context, r *pipeline.Request) error {
	var body labelboxBody
	if err := json.Unmarshal(r.Body, &body); err != nil {
		return &pipeline.DeliveryError{Msg: fmt.Sprintf("labelbox: request body is not a createBatchV2 request: %v", err)}
	}
	name := body.Variables.Name
	s.mu.Lock()
	retry := s.retries[name]
	s.mu.Unlock()
	sent := r.Body
	if retry != nil {
		// The batch exists; queue what it could not take on its own.
		body.Variables.Name = retryBatchName(name, retry.round)
		body.Variables.GlobalKeys = retry.keys
		var buf bytes.Buffer
		if err := encodeJSON(&buf, body); err != nil {
			return &pipeline.DeliveryError{Msg: fmt.Sprintf("labelbox: encode retry batch: %v", err)}
		}
		sent = buf.Bytes()
	}
	if err := s.hold(ctx); err != nil {
		return err
	}
	req, err := s.request(ctx, sent)
	if err != nil {
		return &pipeline.DeliveryError{Msg: fmt.Sprintf("labelbox: build request: %v", redact.Error(err))}
	}
	resp, err := send(ctx, s.client, req, graphqlAnswerLimit)
	if err != nil {
		return err
	}
	stillFailed, err := s.judge(req, resp)
	if err != nil {
		return s.paceFrom(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(stillFailed) == 0 {
		delete(s.retries, name)
		return nil
	}
	next := &keyRetry{keys: stillFailed, round: 1}
	if retry != nil {
		next.round = retry.round + 1
	}
	s.retries[name] = next
	return &pipeline.DeliveryError{Status: resp.status, Retry: true, Answer: answer(resp.body), Msg: fmt.Sprintf(
		"labelbox: batch %q: %d of %d global keys were not queued (failedDataRowIds: %s); the next attempt queues them as batch %q",
		body.Variables.Name, len(stillFailed), len(body.Variables.GlobalKeys), keyList(stillFailed), retryBatchName(name, next.round))}
}

// retryBatchName names a batch of the keys a batch could not take. A
// repeated attempt of a round reuses its name, so a round that timed out
// but was carried out is answered "already exists".
func retryBatchName(name string, round int) string {
	return fmt.Sprintf("%s-retry%d", name, round)
}

// keyList names keys for a message, the first 20 of them.
func keyList(keys []string) string {
	const show = 20
	q := make([]string, 0, min(len(keys), show))
	for _, k := range keys[:min(len(keys), show)] {
		q = append(q, strconv.Quote(k))
	}
	s := strings.Join(q, ", ")
	if len(keys) > show {
		s += fmt.Sprintf(" and %d more", len(keys)-show)
	}
	return s
}

// labelboxAnswer is what the preset reads of Labelbox's answer.
type labelboxAnswer struct {
	Data *struct {
		Project *struct {
			CreateBatchV2 *struct {
				Batch *struct {
					ID string `json:"id"`
				} `json:"batch"`
				FailedDataRowIDs []string `json:"failedDataRowIds"`
			} `json:"createBatchV2"`
		} `json:"project"`
	} `json:"data"`
	Errors []gqlError `json:"errors"`
}

// judge classifies an answer: delivered (with the keys that failed, if
// any) or a *pipeline.DeliveryError.
func (s *Labelbox) judge(req *http.Request, resp *response) (failed []string, err error) {
	var ans labelboxAnswer
	parsed := json.Unmarshal(resp.body, &ans) == nil
	ok := resp.status >= 200 && resp.status < 300
	if parsed && len(ans.Errors) > 0 {
		if resp.status < 500 && !slices.ContainsFunc(ans.Errors, func(e gqlError) bool { return !labelboxAlreadyDone.MatchString(e.Message) }) {
			return nil, nil // the batch name is taken: an earlier attempt queued it
		}
		if ok {
			return nil, s.graphqlError(req, resp, ans.Errors)
		}
	}
	if !ok {
		return nil, statusError(req, resp, retryableStatus(resp.status))
	}
	if !parsed {
		return nil, &pipeline.DeliveryError{Status: resp.status, Retry: true, Answer: answer(resp.body),
			Msg: fmt.Sprintf("POST %s: answer is not GraphQL JSON", redact.URL(req.URL))}
	}
	if ans.Data == nil || ans.Data.Project == nil || ans.Data.Project.CreateBatchV2 == nil {
		return nil, &pipeline.DeliveryError{Status: resp.status, Answer: answer(resp.body),
			Msg: fmt.Sprintf("POST %s: answer has no project.createBatchV2 result", redact.URL(req.URL))}
	}
	return ans.Data.Project.CreateBatchV2.FailedDataRowIDs, nil
}

// graphqlError classifies errors[] in a 2xx by extensions.code: retryable
// only if every error is (INTERNAL_SERVER_ERROR, a rate limit), permanent
// otherwise (AUTHENTICATION_ERROR, AUTHORIZATION_ERROR,
// GRAPHQL_VALIDATION_FAILED, MALFORMED_REQUEST, unknown codes).
func (s *Labelbox) graphqlError(req *http.Request, resp *response, errs []gqlError) error {
	var first *gqlError
	retry := true
	for i := range errs {
		e := &errs[i]
		if labelboxAlreadyDone.MatchString(e.Message) {
			continue
		}
		if first == nil {
			first = e
		}
		if !slices.Contains(labelboxRetryable, strings.ToUpper(e.code())) && !strings.Contains(strings.ToLower(e.Message), rateLimitMessage) {
			retry, first = false, e
			break
		}
	}
	code := cmp.Or(first.code(), "no code")
	msg := fmt.Sprintf("POST %s: labelbox error %s: %s", redact.URL(req.URL), code, strconv.Quote(clip(first.Message, 300)))
	if len(errs) > 1 {
		msg += fmt.Sprintf(" (and %d more)", len(errs)-1)
	}
	return deliveryError(resp, retry, msg)
}

func (s *Labelbox) request(ctx context.Context, body []byte) (*http.Request, error) {
	req, err := s.newPost(ctx, "/graphql", body)
	if err == nil {
		req.Header.Set("Authorization", "Bearer "+s.key)
	}
	return req, err
}

// Describe says what Send would do with r, the key redacted.
func (s *Labelbox) Describe(r *pipeline.Request) map[string]any {
	req, err := s.request(context.Background(), r.Body)
	return describeBuilt(req, err, r.Body)
}

var (
	_ pipeline.Sink               = (*Labelbox)(nil)
	_ pipeline.Describer          = (*Labelbox)(nil)
	_ pipeline.Validator          = (*LabelboxConfig)(nil)
	_ pipeline.RateLimitDefaulter = (*LabelboxConfig)(nil)
)
