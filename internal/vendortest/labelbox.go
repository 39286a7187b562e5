package vendortest

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
)

// Labelbox fakes Labelbox's GraphQL API: POST /graphql with
// `Authorization: Bearer <key>` and {"query", "variables"}. It understands
// project(where:{id}) { createBatchV2(input:{name, globalKeys|dataRowIds,
// priority}) } and deleteBatchLabels(batchId, data:{type}). Errors come
// back as HTTP 200 with errors[] carrying extensions.code, as Labelbox does;
// a body that is not JSON gets a 400.
type Labelbox struct {
	*Server
	apiKey string

	mu       sync.Mutex
	batches  map[string][]LabelboxBatch // by project id
	requeued []LabelboxRequeue
	// failKeys are global keys the next batches refuse
	// (failedDataRowIds), with how many more times each is refused.
	failKeys map[string]int
}

// LabelboxBatch is a batch the fake created.
type LabelboxBatch struct {
	ID, ProjectID, Name string
	GlobalKeys          []string
	DataRowIDs          []string
	Priority            int
}

// LabelboxRequeue is one deleteBatchLabels call the fake carried out.
type LabelboxRequeue struct {
	ProjectID, BatchID, Type string
}

// Limits Labelbox enforces.
const (
	LabelboxMaxBatchRows    = 100_000
	LabelboxMaxGlobalKeyLen = 200
)

// LabelboxRateLimitMessage is how the fake words a rate limit.
const LabelboxRateLimitMessage = "You have exceeded the rate limit for this API key. Please try again later."

// NewLabelbox starts a fake Labelbox that accepts apiKey. With tb set it
// is closed when the test ends.
func NewLabelbox(tb testing.TB, apiKey string) *Labelbox {
	l := &Labelbox{apiKey: apiKey, batches: map[string][]LabelboxBatch{}, failKeys: map[string]int{}}
	l.Server = newServer(tb, l.handle, func(status int) any {
		return map[string]any{"errors": []any{gqlErrorBody(http.StatusText(status), "INTERNAL_SERVER_ERROR")}}
	}, labelboxKeys)
	return l
}

// labelboxKeys is the batch name a request's variables carry (as $name
// or $input.name), the key Labelbox counts it by.
func labelboxKeys(_ *http.Request, body []byte) []string {
	var req struct {
		Variables struct {
			Name  any `json:"name"`
			Input struct {
				Name any `json:"name"`
			} `json:"input"`
		} `json:"variables"`
	}
	if json.Unmarshal(body, &req) != nil {
		return nil
	}
	for _, v := range []any{req.Variables.Name, req.Variables.Input.Name} {
		if name, ok := v.(string); ok && name != "" {
			return []string{name}
		}
	}
	return nil
}

// Endpoint is the GraphQL endpoint URL.
func (l *Labelbox) Endpoint() string { return l.URL + "/graphql" }

// FailNextGraphQL answers the next n requests with HTTP 200 and one error
// carrying code and message, e.g. INTERNAL_SERVER_ERROR.
func (l *Labelbox) FailNextGraphQL(n int, code, message string) {
	l.failNextWith(n, http.StatusOK, "", map[string]any{"data": nil, "errors": []any{gqlErrorBody(message, code)}})
}

// RateLimitNext answers the next n requests with Labelbox's rate-limit
// error in a 200 ("You have exceeded ...").
func (l *Labelbox) RateLimitNext(n int) {
	l.FailNextGraphQL(n, "RATE_LIMITED", LabelboxRateLimitMessage)
}

// FailGlobalKeys makes each of keys fail in the next times batches that
// carry it, as Labelbox does for a global key without a data row (yet):
// the batch is created without it and the answer lists it in
// failedDataRowIds.
func (l *Labelbox) FailGlobalKeys(times int, keys ...string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, k := range keys {
		l.failKeys[k] += times
	}
}

// Batches returns the batches created in a project, in creation order.
func (l *Labelbox) Batches(projectID string) []LabelboxBatch {
	defer l.settled()()
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]LabelboxBatch(nil), l.batches[projectID]...)
}

// Requeues returns the deleteBatchLabels calls carried out.
func (l *Labelbox) Requeues() []LabelboxRequeue {
	defer l.settled()()
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]LabelboxRequeue(nil), l.requeued...)
}

func gqlErrorBody(message, code string) map[string]any {
	return map[string]any{"message": message, "extensions": map[string]any{"code": code}}
}

// gqlFail is a GraphQL error to answer with.
type gqlFail struct {
	code, msg string
	outcome   Outcome
}

func (e *gqlFail) Error() string { return e.code + ": " + e.msg }

func gqlErrorf(code, format string, args ...any) *gqlFail {
	return &gqlFail{code: code, msg: fmt.Sprintf(format, args...), outcome: Rejected}
}

func gqlReply(status int, errs ...*gqlFail) reply {
	list := make([]any, len(errs))
	outcome := Rejected
	for i, e := range errs {
		list[i] = gqlErrorBody(e.msg, e.code)
		if e.outcome == Duplicate {
			outcome = Duplicate
		}
	}
	return reply{status: status, body: map[string]any{"data": nil, "errors": list}, outcome: outcome}
}

func (l *Labelbox) handle(r *http.Request, body []byte) reply {
	if r.URL.Path != "/graphql" {
		return reply{status: http.StatusNotFound, body: []byte("Not Found"), outcome: Rejected}
	}
	if r.Method != http.MethodPost {
		return gqlReply(http.StatusMethodNotAllowed, gqlErrorf("MALFORMED_REQUEST", "GraphQL requests must be POST"))
	}
	if r.Header.Get("Authorization") != "Bearer "+l.apiKey || l.apiKey == "" {
		return gqlReply(http.StatusOK, gqlErrorf("AUTHENTICATION_ERROR", "Invalid or missing API key: send Authorization: Bearer <key>"))
	}
	var req struct {
		Query     *string         `json:"query"`
		Variables json.RawMessage `json:"variables"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return gqlReply(http.StatusBadRequest, gqlErrorf("MALFORMED_REQUEST", "POST body sent invalid JSON: %v", err))
	}
	if req.Query == nil || strings.TrimSpace(*req.Query) == "" {
		return gqlReply(http.StatusBadRequest, gqlErrorf("MALFORMED_REQUEST", "GraphQL operations must contain a non-empty `query`"))
	}
	vars := map[string]any{}
	if len(req.Variables) > 0 && string(req.Variables) != "null" {
		if err := json.Unmarshal(req.Variables, &vars); err != nil {
			return gqlReply(http.StatusBadRequest, gqlErrorf("MALFORMED_REQUEST", "variables must be an object"))
		}
	}
	doc, err := parseGraphQL(*req.Query)
	if err != nil {
		return gqlReply(http.StatusOK, gqlErrorf("GRAPHQL_PARSE_FAILED", "%v", err))
	}
	if e := checkVariables(doc, vars); e != nil {
		return gqlReply(http.StatusOK, e)
	}
	if doc.kind != "mutation" {
		return gqlReply(http.StatusOK, gqlErrorf("GRAPHQL_VALIDATION_FAILED", "this fake only serves mutations, got a %s", doc.kind))
	}
	data := map[string]any{}
	var errs []*gqlFail
	for _, f := range doc.sel {
		if f.name != "project" {
			errs = append(errs, gqlErrorf("GRAPHQL_VALIDATION_FAILED", "Cannot query field %q on type \"Mutation\".", f.name))
			continue
		}
		res, e := l.project(f, vars)
		if e != nil {
			errs = append(errs, e...)
			continue
		}
		data[f.key()] = res
	}
	if len(errs) > 0 {
		return gqlReply(http.StatusOK, errs...)
	}
	return reply{status: http.StatusOK, body: map[string]any{"data": data}, outcome: Accepted}
}

// checkVariables applies GraphQL's variable rules: every variable used is
// declared, and every non-null variable is provided.
func checkVariables(doc *gqlDoc, vars map[string]any) *gqlFail {
	used := map[string]bool{}
	usedVars(doc.sel, used)
	for _, n := range slices.Sorted(maps.Keys(used)) {
		if _, ok := doc.vars[n]; !ok {
			return gqlErrorf("GRAPHQL_VALIDATION_FAILED", "Variable \"$%s\" is not defined.", n)
		}
	}
	for n, typ := range doc.vars {
		if v, ok := vars[n]; strings.HasSuffix(typ, "!") && (!ok || v == nil) {
			return gqlErrorf("GRAPHQL_VALIDATION_FAILED", "Variable \"$%s\" of required type \"%s\" was not provided.", n, typ)
		}
	}
	return nil
}

func (l *Labelbox) project(f *gqlField, vars map[string]any) (map[string]any, []*gqlFail) {
	where, err := resolve(f.args["where"], vars)
	if err != nil {
		return nil, []*gqlFail{gqlErrorf("GRAPHQL_VALIDATION_FAILED", "%v", err)}
	}
	w, _ := where.(map[string]any)
	id, _ := w["id"].(string)
	if id == "" {
		return nil, []*gqlFail{gqlErrorf("GRAPHQL_VALIDATION_FAILED", "Field \"project\" argument \"where\" of type \"WhereUniqueIdInput!\" needs an id.")}
	}
	if len(f.sel) == 0 {
		return nil, []*gqlFail{gqlErrorf("GRAPHQL_VALIDATION_FAILED", "Field \"project\" of type \"Project\" must have a selection of subfields.")}
	}
	out := map[string]any{}
	var errs []*gqlFail
	for _, sub := range f.sel {
		var res any
		var e *gqlFail
		switch sub.name {
		case "createBatchV2":
			res, e = l.createBatch(id, sub, vars)
		case "deleteBatchLabels":
			res, e = l.deleteBatchLabels(id, sub, vars)
		case "id", "name":
			res = id
		default:
			e = gqlErrorf("GRAPHQL_VALIDATION_FAILED", "Cannot query field %q on type \"Project\".", sub.name)
		}
		if e != nil {
			errs = append(errs, e)
			continue
		}
		out[sub.key()] = res
	}
	return out, errs
}

func (l *Labelbox) createBatch(projectID string, f *gqlField, vars map[string]any) (any, *gqlFail) {
	raw, err := resolve(f.args["input"], vars)
	if err != nil {
		return nil, gqlErrorf("GRAPHQL_VALIDATION_FAILED", "%v", err)
	}
	in, ok := raw.(map[string]any)
	if !ok {
		return nil, gqlErrorf("GRAPHQL_VALIDATION_FAILED", "Field \"createBatchV2\" argument \"input\" of type \"CreateBatchV2Input!\" is required.")
	}
	name, _ := in["name"].(string)
	if strings.TrimSpace(name) == "" {
		return nil, gqlErrorf("GRAPHQL_VALIDATION_FAILED", "Field \"CreateBatchV2Input.name\" of required type \"String!\" was not provided.")
	}
	keys, keysErr := stringList(in["globalKeys"])
	rows, rowsErr := stringList(in["dataRowIds"])
	switch {
	case keysErr != nil:
		return nil, gqlErrorf("BAD_USER_INPUT", "globalKeys: %v", keysErr)
	case rowsErr != nil:
		return nil, gqlErrorf("BAD_USER_INPUT", "dataRowIds: %v", rowsErr)
	case (len(keys) > 0) == (len(rows) > 0):
		return nil, gqlErrorf("BAD_USER_INPUT", "Provide exactly one of globalKeys or dataRowIds, non-empty.")
	case len(keys)+len(rows) > LabelboxMaxBatchRows:
		return nil, gqlErrorf("BAD_USER_INPUT", "A batch holds at most %d data rows, got %d.", LabelboxMaxBatchRows, len(keys)+len(rows))
	}
	for _, k := range keys {
		if len(k) > LabelboxMaxGlobalKeyLen || k == "" {
			return nil, gqlErrorf("BAD_USER_INPUT", "Global key %q must be 1 to %d characters.", clipText(k, 40), LabelboxMaxGlobalKeyLen)
		}
	}
	priority := 5
	if p, ok := in["priority"]; ok && p != nil {
		pf, isNum := p.(float64)
		if !isNum || pf != float64(int(pf)) || pf < 1 || pf > 5 {
			return nil, gqlErrorf("BAD_USER_INPUT", "priority must be an integer from 1 to 5.")
		}
		priority = int(pf)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, b := range l.batches[projectID] {
		if b.Name == name {
			e := gqlErrorf("BAD_USER_INPUT", "Batch with name %q already exists in this project.", name)
			e.outcome = Duplicate
			return nil, e
		}
	}
	n := 0
	for _, bs := range l.batches {
		n += len(bs)
	}
	failed := []any{}
	kept := keys[:0:0]
	for _, k := range keys {
		if l.failKeys[k] > 0 {
			l.failKeys[k]--
			failed = append(failed, k)
			continue
		}
		kept = append(kept, k)
	}
	if keys != nil {
		keys = kept
	}
	b := LabelboxBatch{ID: fmt.Sprintf("batch-%04d", n+1), ProjectID: projectID, Name: name, GlobalKeys: keys, DataRowIDs: rows, Priority: priority}
	l.batches[projectID] = append(l.batches[projectID], b)
	return map[string]any{"batch": map[string]any{"id": b.ID, "name": b.Name}, "failedDataRowIds": failed}, nil
}

func (l *Labelbox) deleteBatchLabels(projectID string, f *gqlField, vars map[string]any) (any, *gqlFail) {
	batchID, err := resolve(f.args["batchId"], vars)
	if err != nil {
		return nil, gqlErrorf("GRAPHQL_VALIDATION_FAILED", "%v", err)
	}
	id, _ := batchID.(string)
	data, err := resolve(f.args["data"], vars)
	if err != nil {
		return nil, gqlErrorf("GRAPHQL_VALIDATION_FAILED", "%v", err)
	}
	d, _ := data.(map[string]any)
	typ, _ := d["type"].(string)
	switch typ {
	case "DeleteLabels", "RequeueDataWithLabelAsTemplate", "RequeueData":
	default:
		return nil, gqlErrorf("GRAPHQL_VALIDATION_FAILED", "Value %q does not exist in \"DeleteBatchLabelsType\" enum.", typ)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if !slices.ContainsFunc(l.batches[projectID], func(b LabelboxBatch) bool { return b.ID == id }) {
		return nil, gqlErrorf("RESOURCE_NOT_FOUND", "Batch %q not found in project %q.", id, projectID)
	}
	l.requeued = append(l.requeued, LabelboxRequeue{ProjectID: projectID, BatchID: id, Type: typ})
	return map[string]any{"id": id}, nil
}

// stringList reads an optional JSON list of strings.
func stringList(v any) ([]string, error) {
	if v == nil {
		return nil, nil
	}
	list, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("must be a list of strings")
	}
	out := make([]string, len(list))
	for i, e := range list {
		s, ok := e.(string)
		if !ok {
			return nil, fmt.Errorf("entry %d is not a string", i)
		}
		out[i] = s
	}
	return out, nil
}

func clipText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
