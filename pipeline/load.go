package pipeline

// Loading a config: strict YAML decoding with positions, ${VAR}
// interpolation, and every error of a file reported at once.

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"
)

// LoadOption changes how a config is loaded.
type LoadOption func(*loadOptions)

type loadOptions struct {
	allowUnsetEnv bool
	placeholders  bool
	lookupEnv     func(string) (string, bool)
	registry      *Registry
}

// LookupEnv makes ${VAR} read variables through lookup instead of the
// process environment; validate --env-file and --no-env use it.
func LookupEnv(lookup func(name string) (string, bool)) LoadOption {
	return func(o *loadOptions) { o.lookupEnv = lookup }
}

// EnvPlaceholders replaces an unset ${VAR} without a default by a
// placeholder, EnvPlaceholder(VAR), instead of reporting an error, so that
// a config's shape can be checked without its secrets.
func EnvPlaceholders() LoadOption { return func(o *loadOptions) { o.placeholders = true } }

// EnvPlaceholder is what EnvPlaceholders puts in place of ${name}: long
// enough to pass as a token, and safe in a URL, a header and a jq string.
func EnvPlaceholder(name string) string {
	return "placeholder-" + strings.ToLower(strings.ReplaceAll(name, "_", "-"))
}

// IsEnvPlaceholder reports whether s is a value EnvPlaceholders put in
// place of an unset variable, so that a type's check of a value's form
// (a numeric id, say) can let it pass: only its presence is known.
func IsEnvPlaceholder(s string) bool {
	rest, ok := strings.CutPrefix(s, "placeholder-")
	return ok && rest != "" && strings.Trim(rest, "abcdefghijklmnopqrstuvwxyz0123456789-") == ""
}

// AllowUnsetEnv leaves an unset ${VAR} without a default as written
// instead of reporting an error; preview uses it so that no vendor keys
// are needed.
func AllowUnsetEnv() LoadOption { return func(o *loadOptions) { o.allowUnsetEnv = true } }

// ResolveWith makes loading also Resolve the stage and sink options against
// reg, so that their errors are reported together with every other error
// in the file rather than after those are fixed.
func ResolveWith(reg *Registry) LoadOption { return func(o *loadOptions) { o.registry = reg } }

// LoadConfig reads and decodes a config file. Stage and sink options are
// decoded against a registry later, by Resolve (New calls it).
func LoadConfig(path string, opts ...LoadOption) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return ParseConfig(path, data, opts...)
}

// ParseConfig decodes config text; name is used in error positions and
// relative paths.
func ParseConfig(name string, data []byte, opts ...LoadOption) (*Config, error) {
	var lo loadOptions
	for _, o := range opts {
		o(&lo)
	}
	cfg := defaultConfig()
	cfg.file = name
	cfg.dir = filepath.Dir(name)
	l := &loader{file: name, allowUnset: lo.allowUnsetEnv}

	f, err := parser.ParseBytes(data, 0)
	if err != nil {
		l.yamlErr("", err)
		return nil, l.errs
	}
	cfg.root = f
	l.root = f // sinks() positions errors by document path
	if len(f.Docs) == 0 || f.Docs[0].Body == nil {
		l.add(nil, "", "config is empty")
		return nil, l.errs
	}
	lookup := lo.lookupEnv
	if lookup == nil {
		lookup = os.LookupEnv
	}
	ast.Walk(&envExpander{l: l, allowUnset: lo.allowUnsetEnv, placeholders: lo.placeholders, lookup: lookup}, f.Docs[0].Body)
	root, ok := f.Docs[0].Body.(*ast.MappingNode)
	if !ok {
		l.add(f.Docs[0].Body, "", "config must be a mapping")
		return nil, l.errs
	}
	sections := map[string]any{
		"server": &cfg.Server, "admin": &cfg.Admin, "broker": &cfg.Broker,
		"redis": &cfg.Redis, "tracing": &cfg.Tracing, "log": &cfg.Log, "jq": &cfg.JQ, "history": &cfg.History,
	}
	for _, mv := range root.Values {
		key := mv.Key.String()
		switch key {
		case "stages":
			cfg.Stages = l.stages(mv.Value)
		case "sinks":
			cfg.Sinks = l.sinks(mv.Value)
		case "custom_events":
			one := *root
			one.Values = []*ast.MappingValueNode{mv}
			var v struct {
				CustomEvents []string `yaml:"custom_events"`
			}
			if err := yaml.NodeToValue(&one, &v, yaml.Strict()); err != nil {
				l.decodeErr(mv, "custom_events", err)
			} else {
				cfg.CustomEvents = v.CustomEvents
			}
		default:
			dst, ok := sections[key]
			if !ok {
				l.add(mv.Key, "", fmt.Sprintf("unknown key %q (want server, admin, broker, redis, tracing, log, jq, custom_events, stages or sinks)", key))
				continue
			}
			if m, ok := mv.Value.(*ast.MappingNode); ok {
				l.decode(m, dst, key)
			} else if _, null := mv.Value.(*ast.NullNode); !null {
				l.add(mv.Value, key, "must be a mapping")
			}
		}
	}
	l.check(&cfg)
	if lo.registry != nil {
		cfg.resolve(l, lo.registry)
	}
	if len(l.errs) > 0 {
		l.sort()
		return nil, l.errs
	}
	cfg.resolved = lo.registry != nil
	return &cfg, nil
}

// File is the config file's name.
func (c *Config) File() string { return c.file }

// Dir is the directory relative paths in the config start from.
func (c *Config) Dir() string { return c.dir }

// Resolve decodes every stage's and sink's own options against reg and
// validates them. It reports all errors at once, each with its position.
func (c *Config) Resolve(reg *Registry) error {
	if c.resolved {
		return nil
	}
	l := &loader{file: c.file, root: c.root}
	c.resolve(l, reg)
	if len(l.errs) > 0 {
		l.sort()
		return l.errs
	}
	c.resolved = true
	return nil
}

// resolve checks the broker kind, and decodes and validates the stage and
// sink options, into l's errors.
func (c *Config) resolve(l *loader, reg *Registry) {
	switch t, ok := reg.Backend(c.Broker.Type); {
	case !ok:
		want := "no backend is registered"
		if kinds := reg.BackendTypes(); len(kinds) > 0 {
			want = "want " + strings.Join(kinds, " or ")
		}
		l.at("broker.type", "broker", "type", fmt.Sprintf("unknown broker %q (%s)", c.Broker.Type, want))
	case t.Configured != nil && !t.Configured(c):
		l.at("broker.type", "broker", "type", fmt.Sprintf("broker %s needs %s in the config", c.Broker.Type, t.Needs))
	}
	for i := range c.Stages {
		s := &c.Stages[i]
		t, ok := reg.Stage(s.Type)
		if !ok {
			l.at(s.path+".type", s.label(), "", fmt.Sprintf("unknown stage type %q (known: %s)", s.Type, strings.Join(reg.StageTypes(), ", ")))
			continue
		}
		s.Options = t.Config()
		l.decodeOptions(s.node, map[string]bool{"type": true, "name": true}, s.Options, s.path, s.label())
		c.checkKeyStore(l, reg, s)
		if en, ok := s.Options.(EventNamer); ok {
			field, events := en.EventNames()
			l.checkEvents(c.knownEvents(), s.path, s.label(), field, events)
		}
	}
	for i := range c.Sinks {
		s := &c.Sinks[i]
		if s.Type == "" {
			continue // "type is required" is reported already
		}
		t, ok := reg.Sink(s.Type)
		if !ok {
			l.at(s.path+".type", s.label(), "", fmt.Sprintf("unknown sink type %q (known: %s)", s.Type, strings.Join(reg.SinkTypes(), ", ")))
			continue
		}
		s.Options = t.Config()
		l.decodeOptions(s.node, sinkCommonKeys, s.Options, s.path, s.label())
		if d, ok := s.Options.(RateLimitDefaulter); ok && !hasKey(s.node, "rate_limit") {
			s.RateLimit = d.DefaultRateLimit()
		}
	}
}

func hasKey(m *ast.MappingNode, key string) bool {
	for _, mv := range m.Values {
		if mv.Key.String() == key {
			return true
		}
	}
	return false
}

// checkKeyStore refuses a stage that keeps its keys in a store that
// outlives the process while the broker keeps exports in the process.
func (c *Config) checkKeyStore(l *loader, reg *Registry, s *StageConfig) {
	kk, ok := s.Options.(KeyKeeper)
	if !ok {
		return
	}
	broker, bok := reg.Backend(c.Broker.Type)
	if !bok || !broker.InProcess {
		return // a broker outside the process admits at once and keeps what it took
	}
	if h := kk.KeyHold(); h > 0 && h <= c.Broker.QueueWait {
		l.at(s.path+".hold", s.label(), "hold", fmt.Sprintf(
			"must be longer than broker.queue_wait (%s): a request waiting for room would lose its hold, and its retry would be stored twice", c.Broker.QueueWait))
	}
	if store, ok := reg.Backend(kk.KeyStore()); !ok || store.InProcess {
		return
	}
	l.at(s.path+".store", s.label(), "store", fmt.Sprintf(
		"store %s keeps keys after a crash, but broker %s loses the exports they name: a retry would be answered \"duplicate\" for an export that is gone; use broker.type %s, or store %s",
		kk.KeyStore(), c.Broker.Type, kk.KeyStore(), c.Broker.Type))
}

// entryError positions an error found while building a stage or sink at
// its entry in the file, so that it reads like every other config error.
func (c *Config) entryError(path, label string, err error) error {
	l := &loader{file: c.file, root: c.root}
	var fe *FieldError
	if errors.As(err, &fe) {
		l.at(path+"."+fe.Field, label, fe.Field, fe.Msg)
	} else {
		l.at(path, label, "", err.Error())
	}
	l.errs[0].Err = err
	return l.errs
}

func (s *StageConfig) label() string { return fmt.Sprintf("%s %q", s.path, s.Name) }
func (s *SinkConfig) label() string  { return fmt.Sprintf("%s %q", s.path, s.Name) }

// loader collects every error of one file.
type loader struct {
	file string
	root *ast.File
	errs ConfigErrors
	// allowUnset is AllowUnsetEnv: the config is read to be looked at
	// (preview, dlq), so missing secrets are not errors.
	allowUnset bool
}

func (l *loader) add(n ast.Node, path, msg string) {
	e := &ConfigError{File: l.file, Path: path, Msg: msg}
	if n != nil && n.GetToken() != nil {
		e.Line, e.Col = n.GetToken().Position.Line, n.GetToken().Position.Column
	}
	// An unset variable already explains what is wrong with its value; a
	// second error there ("is empty") would only repeat it.
	for _, prev := range l.errs {
		if e.Line > 0 && prev.Line == e.Line && prev.Col == e.Col && strings.HasPrefix(prev.Msg, "environment variable ") {
			return
		}
	}
	l.errs = append(l.errs, e)
}

// at reports an error at a document path like "sinks[1].retry.max_attempts",
// falling back to the nearest enclosing node that is present.
func (l *loader) at(docPath, label, field, msg string) {
	p := docPath
	for {
		if yp, err := yaml.PathString("$." + p); err == nil && l.root != nil {
			if n, err := yp.FilterFile(l.root); err == nil && n != nil {
				if mv, ok := n.(*ast.MappingValueNode); ok {
					n = mv.Value
				}
				display := label
				if field != "" {
					display += ": " + field
				}
				l.add(n, display, msg)
				return
			}
		}
		cut := strings.LastIndexAny(p, ".[")
		if cut <= 0 {
			break
		}
		p = p[:cut]
	}
	l.errs = append(l.errs, &ConfigError{File: l.file, Path: label + ": " + field, Msg: msg})
}

func (l *loader) yamlErr(path string, err error) {
	var ye yaml.Error
	if errors.As(err, &ye) {
		e := &ConfigError{File: l.file, Path: path, Msg: ye.GetMessage()}
		if tk := ye.GetToken(); tk != nil {
			e.Line, e.Col = tk.Position.Line, tk.Position.Column
		}
		l.errs = append(l.errs, e)
		return
	}
	l.errs = append(l.errs, &ConfigError{File: l.file, Path: path, Msg: err.Error()})
}

// validation turns a Validate error (possibly joined FieldErrors) into
// positioned errors below base.
func (l *loader) validation(base, label string, err error) {
	for _, e := range flatten(err) {
		var fe *FieldError
		if errors.As(e, &fe) {
			l.at(base+"."+fe.Field, label, fe.Field, fe.Msg)
		} else {
			l.at(base, label, "", e.Error())
		}
	}
}

func flatten(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	return []error{err}
}

func (l *loader) sort() {
	sort.SliceStable(l.errs, func(i, j int) bool {
		a, b := l.errs[i], l.errs[j]
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Col < b.Col
	})
}

func (l *loader) stages(n ast.Node) []StageConfig {
	seq, ok := n.(*ast.SequenceNode)
	if !ok {
		if _, null := n.(*ast.NullNode); !null {
			l.add(n, "stages", "must be a list of {type, name, ...options}")
		}
		return nil
	}
	var out []StageConfig
	names := map[string]bool{}
	for i, item := range seq.Values {
		path := fmt.Sprintf("stages[%d]", i)
		m, ok := item.(*ast.MappingNode)
		if !ok {
			l.add(item, path, "must be a mapping with a type")
			continue
		}
		s := StageConfig{node: m, path: path}
		s.Type, s.Name = scalar(m, "type"), scalar(m, "name")
		if s.Type == "" {
			l.add(m, path, "type is required")
			continue
		}
		if s.Name == "" {
			s.Name = s.Type
			for k := 2; names[s.Name]; k++ {
				s.Name = fmt.Sprintf("%s_%d", s.Type, k)
			}
		}
		if names[s.Name] {
			l.add(m, fmt.Sprintf("%s %q", path, s.Name), "name is used by an earlier stage")
		}
		names[s.Name] = true
		out = append(out, s)
	}
	return out
}

var sinkName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_-]*$`)

func (l *loader) sinks(n ast.Node) []SinkConfig {
	seq, ok := n.(*ast.SequenceNode)
	if !ok {
		if _, null := n.(*ast.NullNode); !null {
			l.add(n, "sinks", "must be a list of {name, type, ...options}")
		}
		return nil
	}
	var out []SinkConfig
	names := map[string]bool{}
	for i, item := range seq.Values {
		path := fmt.Sprintf("sinks[%d]", i)
		m, ok := item.(*ast.MappingNode)
		if !ok {
			l.add(item, path, "must be a mapping with a name and a type")
			continue
		}
		s := defaultSink()
		s.node, s.path = m, path
		s.Name = scalar(m, "name")
		label := s.label()
		l.decode(subset(m, sinkCommonKeys, true), &s, label)
		switch {
		case s.Name == "":
			l.add(m, path, "name is required")
		case !sinkName.MatchString(s.Name):
			l.add(m, label, "name may hold only letters, digits, _ and -")
		case names[s.Name]:
			l.add(m, label, "name is used by an earlier sink")
		}
		names[s.Name] = true
		if s.Type == "" {
			l.add(m, label, "type is required")
		}
		if len(s.Events) == 0 {
			l.at(path+".events", label, "events", "must list at least one event")
		}
		if s.Filter != "" {
			if _, err := CompileJQ(s.Filter); err != nil {
				l.at(path+".filter", label, "filter", err.Error())
			}
		}
		if s.Timeout <= 0 {
			l.at(path+".timeout", label, "timeout", "must be > 0")
		}
		if s.MaxInFlight < 1 {
			l.at(path+".max_in_flight", label, "max_in_flight", "must be ≥ 1")
		}
		if s.Queue.MaxRequests < 1 {
			l.at(path+".queue.max_requests", label, "queue.max_requests", "must be ≥ 1")
		}
		if s.Queue.MaxBytes < 1 {
			l.at(path+".queue.max_bytes", label, "queue.max_bytes", "must be ≥ 1")
		}
		switch s.Queue.OnFull {
		case OnFullDeadLetter, OnFullBackpressure:
		default:
			l.at(path+".queue.on_full", label, "queue.on_full", fmt.Sprintf("unknown action %q (want dead_letter or backpressure)", s.Queue.OnFull))
		}
		out = append(out, s)
	}
	return out
}

// check validates the top-level sections and the sinks' common keys.
func (l *loader) check(c *Config) {
	l.root = c.root
	if c.Broker.FanoutWorkers < 1 {
		l.at("broker.fanout_workers", "broker", "fanout_workers", "must be ≥ 1")
	}
	if c.Broker.MaxPending < 1 {
		l.at("broker.max_pending", "broker", "max_pending", "must be ≥ 1")
	}
	if c.History.MaxExports < 1 {
		l.at("history.max_exports", "history", "max_exports", "must be ≥ 1")
	}
	if c.History.TTL <= 0 {
		l.at("history.ttl", "history", "ttl", "must be > 0")
	}
	if c.History.MaxPayloadBytes < 0 {
		l.at("history.max_payload_bytes", "history", "max_payload_bytes", "must be ≥ 0 (0: keep no body, no resend)")
	}
	if c.JQ.Timeout <= 0 {
		l.at("jq.timeout", "jq", "timeout", "must be > 0")
	}
	if c.JQ.MaxOutputs < 1 {
		l.at("jq.max_outputs", "jq", "max_outputs", "must be ≥ 1")
	}
	if c.JQ.MaxOutputBytes < 1 {
		l.at("jq.max_output_bytes", "jq", "max_output_bytes", "must be ≥ 1")
	}
	if c.JQ.MaxMemory < 0 {
		l.at("jq.max_memory", "jq", "max_memory", "must be ≥ 0 (0: no bound)")
	}
	if c.Broker.QueueWait < 0 {
		l.at("broker.queue_wait", "broker", "queue_wait", "must be ≥ 0")
	}
	if !strings.HasPrefix(c.Server.Path, "/") {
		l.at("server.path", "server", "path", "must start with /")
	}
	if c.Server.MaxBodyBytes <= 0 {
		l.at("server.max_body_bytes", "server", "max_body_bytes", "must be > 0")
	}
	if n := c.Server.MaxInflightBytes; n != 0 && n < c.Server.MaxBodyBytes {
		l.at("server.max_inflight_bytes", "server", "max_inflight_bytes", "must be ≥ max_body_bytes, or one body could never be read")
	}
	l.checkServerLimits(&c.Server)
	l.checkTLS("server", c.Server.TLS)
	l.checkTLS("admin", c.Admin.TLS)
	l.checkAdmin(&c.Admin, c.dir)
	switch c.Tracing.CallerContext {
	case "", CallerContextLink, CallerContextParent:
	default:
		l.at("tracing.caller_context", "tracing", "caller_context", fmt.Sprintf("unknown %q (want link or parent)", c.Tracing.CallerContext))
	}
	switch c.Tracing.Exporter {
	case "", "none", "otlp", "stdout":
	default:
		l.at("tracing.exporter", "tracing", "exporter", fmt.Sprintf("unknown exporter %q (want none, otlp or stdout)", c.Tracing.Exporter))
	}
	switch c.Tracing.Protocol {
	case "", "grpc", "http", "http/protobuf":
	default:
		l.at("tracing.protocol", "tracing", "protocol", fmt.Sprintf("unknown protocol %q (want grpc or http)", c.Tracing.Protocol))
	}
	if err := CheckOTLPEndpoint(c.Tracing.Endpoint, c.Tracing.Protocol); err != nil {
		l.at("tracing.endpoint", "tracing", "endpoint", err.Error())
	}
	if r := c.Tracing.SampleRatio; r != nil && (*r < 0 || *r > 1) {
		l.at("tracing.sample_ratio", "tracing", "sample_ratio", "must be between 0 and 1")
	}
	l.checkLog(c.Log)
	for i, ev := range c.CustomEvents {
		at := fmt.Sprintf("custom_events[%d]", i)
		switch {
		case ev == "":
			l.at(at, at, "", "is empty")
		case slices.Contains(c.CustomEvents[:i], ev):
			l.at(at, at, "", fmt.Sprintf("%q is declared twice", ev))
		}
	}
	known := c.knownEvents()
	for i := range c.Sinks {
		s := &c.Sinks[i]
		l.validation(s.path, s.label(), s.Config.Validate())
		l.checkEvents(known, s.path, s.label(), "events", s.Events)
	}
	if len(c.Sinks) == 0 {
		l.add(nil, "sinks", "at least one sink is required")
	}
}

// decodeOptions strictly decodes the keys of m not in skip into dst, then
// validates dst. It validates even when some keys did not decode, so that
// one bad key does not hide the entry's other problems, but it says
// nothing more about a key that did not decode.
func (l *loader) decodeOptions(m *ast.MappingNode, skip map[string]bool, dst any, path, label string) {
	failed := l.decode(subset(m, skip, false), dst, label)
	v, ok := dst.(Validator)
	if !ok {
		return
	}
	var keep []error
	for _, e := range flatten(v.Validate()) {
		var fe *FieldError
		if errors.As(e, &fe) && failedField(failed, fe.Field) {
			continue
		}
		keep = append(keep, e)
	}
	l.validation(path, label, errors.Join(keep...))
}

// failedField reports whether field (like "retry.max_attempts" or
// "secrets[0]") is, or is below, a key that did not decode.
func failedField(failed map[string]bool, field string) bool {
	for i, r := range field {
		if (r == '.' || r == '[') && failed[field[:i]] {
			return true
		}
	}
	return failed[field]
}

// decode strictly decodes m into dst one key at a time, so that every bad
// key is reported, each at its own position. A nested mapping that does
// not decode as a whole (say retry, with an unknown key) is decoded one
// sub-key at a time, so that its good keys still reach dst and are
// validated: a typo beside max_attempts must not hide max_attempts: 0. It
// returns the dotted paths of the keys that did not decode.
func (l *loader) decode(m *ast.MappingNode, dst any, label string) (failed map[string]bool) {
	failed = map[string]bool{}
	for _, mv := range m.Values {
		one := *m
		one.Values = []*ast.MappingValueNode{mv}
		err := yaml.NodeToValue(&one, dst, yaml.Strict())
		if err == nil {
			continue
		}
		if sub, ok := mv.Value.(*ast.MappingNode); ok && len(sub.Values) > 1 {
			if l.decodeEach(&one, mv, sub, dst, label, mv.Key.String(), failed) {
				continue
			}
		}
		failed[mv.Key.String()] = true
		l.decodeErr(mv, label, err)
	}
	return failed
}

// decodeEach decodes the sub-keys of mv's mapping value one at a time
// into dst, reporting each one that fails at its own position. It returns
// false if each sub-key decodes alone: then the problem is the whole
// mapping's, for the caller to report.
func (l *loader) decodeEach(one *ast.MappingNode, mv *ast.MappingValueNode, sub *ast.MappingNode, dst any, label, path string, failed map[string]bool) bool {
	// wrap is the document {key: {sv}}: one sub-key under its parent key.
	wrap := func(sv *ast.MappingValueNode) (*ast.MappingNode, *ast.MappingValueNode) {
		inner := *sub
		inner.Values = []*ast.MappingValueNode{sv}
		outer := *mv
		outer.Value = &inner
		doc := *one
		doc.Values = []*ast.MappingValueNode{&outer}
		return &doc, &outer
	}
	anyBad := false
	for _, sv := range sub.Values {
		doc, outer := wrap(sv)
		if err := yaml.NodeToValue(doc, dst, yaml.Strict()); err != nil {
			anyBad = true
			failed[path+"."+sv.Key.String()] = true
			l.decodeErr(outer, label, err)
		}
	}
	return anyBad
}

// decodeErr reports err, the failure to decode the one key mv, at the
// position it names, or else at mv's value.
func (l *loader) decodeErr(mv *ast.MappingValueNode, label string, err error) {
	var ye yaml.Error
	if errors.As(err, &ye) && ye.GetToken() != nil && !strings.Contains(err.Error(), "time: ") {
		path := label
		if ye.GetToken() != mv.Key.GetToken() {
			path += ": " + mv.Key.String() // the problem is inside this key's value
		}
		l.yamlErr(path, err)
		return
	}
	msg := err.Error()
	at, path := ast.Node(mv.Value), mv.Key.String()
	if i := strings.LastIndex(msg, "time: "); i >= 0 {
		cause := msg[i+len("time: "):]
		msg = "bad duration: " + cause + ` (use e.g. "500ms", "30s", "24h")`
		// The time package names the value, not the key: find the key
		// below this one that holds it, so the error points there.
		if q := strings.LastIndex(cause, `"`); q > 0 {
			if p := strings.LastIndex(cause[:q], `"`); p >= 0 {
				if n, sub := findScalar(mv.Value, cause[p+1:q]); n != nil {
					at, path = n, path+sub
				}
			}
		}
	}
	l.add(at, label+": "+path, msg)
}

// findScalar finds, below n, the mapping value whose scalar text is v and
// returns it with its dotted path relative to n (e.g. ".initial_interval").
func findScalar(n ast.Node, v string) (ast.Node, string) {
	m, ok := n.(*ast.MappingNode)
	if !ok {
		return nil, ""
	}
	for _, mv := range m.Values {
		if s, ok := mv.Value.(*ast.StringNode); ok && s.Value == v {
			return mv.Value, "." + mv.Key.String()
		}
		if found, sub := findScalar(mv.Value, v); found != nil {
			return found, "." + mv.Key.String() + sub
		}
	}
	return nil, ""
}

// subset returns a mapping with the keys of m that are (keep) or are not
// (!keep) in keys.
func subset(m *ast.MappingNode, keys map[string]bool, keep bool) *ast.MappingNode {
	out := *m
	out.Values = nil
	for _, mv := range m.Values {
		if keys[mv.Key.String()] == keep {
			out.Values = append(out.Values, mv)
		}
	}
	return &out
}

func scalar(m *ast.MappingNode, key string) string {
	for _, mv := range m.Values {
		if mv.Key.String() == key {
			if s, ok := mv.Value.(*ast.StringNode); ok {
				return s.Value
			}
			return mv.Value.String()
		}
	}
	return ""
}

// envExpander interpolates ${VAR} and ${VAR:-default} inside string values.
// It works on the parsed document, so a secret holding YAML syntax cannot
// change the document's shape.
type envExpander struct {
	l            *loader
	allowUnset   bool
	placeholders bool
	lookup       func(string) (string, bool)
}

var envRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}`)

func (v *envExpander) Visit(n ast.Node) ast.Visitor {
	switch n := n.(type) {
	case *ast.LiteralNode:
		// A block scalar (| or >): its string token sits at the block's
		// end, so an unset variable is placed by the block's raw lines.
		if n.Value != nil && n.Start != nil {
			v.expand(n.Value, func(at int) (int, int) {
				origin := n.Value.GetToken().Origin
				refs := envRef.FindAllStringIndex(origin, -1)
				if at >= len(refs) {
					return 0, 0
				}
				before := origin[:refs[at][0]]
				return n.Start.Position.Line + 1 + strings.Count(before, "\n"), len(before) - strings.LastIndexByte(before, '\n')
			})
		}
		return nil
	case *ast.StringNode:
		v.expand(n, nil)
	}
	return v
}

// expand interpolates one string. pos, when set, places the at-th
// reference in the file; otherwise an error points at the string.
func (v *envExpander) expand(s *ast.StringNode, pos func(at int) (line, col int)) {
	if !strings.Contains(s.Value, "${") {
		return
	}
	at := -1
	s.Value = envRef.ReplaceAllStringFunc(s.Value, func(ref string) string {
		at++
		m := envRef.FindStringSubmatch(ref)
		if val, ok := v.lookup(m[1]); ok && val != "" {
			return val
		}
		if m[2] != "" {
			return m[3]
		}
		if v.placeholders {
			return EnvPlaceholder(m[1])
		}
		if v.allowUnset {
			// Left as written, so a preview shows what is missing.
			return ref
		}
		msg := fmt.Sprintf("environment variable %s is not set (set it, or, unless it is a secret, give it a default: ${%s:-default})", m[1], m[1])
		if pos != nil {
			if line, col := pos(at); line > 0 {
				v.l.errs = append(v.l.errs, &ConfigError{File: v.l.file, Line: line, Col: col, Msg: msg})
				return ""
			}
		}
		v.l.add(s, "", msg)
		return ""
	})
}

// checkLog refuses a log level or format the daemon would not know,
// rather than let it fall back to a default unnoticed.
func (l *loader) checkLog(c LogConfig) {
	if !slices.Contains(LogLevels, strings.ToLower(c.Level)) {
		l.at("log.level", "log", "level", fmt.Sprintf("unknown level %q (want %s)", c.Level, strings.Join(LogLevels, ", ")))
	}
	if !slices.Contains(LogFormats, strings.ToLower(c.Format)) {
		l.at("log.format", "log", "format", fmt.Sprintf("unknown format %q (want %s)", c.Format, strings.Join(LogFormats, " or ")))
	}
}

func (l *loader) checkServerLimits(c *ServerConfig) {
	if c.MaxHeaderBytes < 0 {
		l.at("server.max_header_bytes", "server", "max_header_bytes", "must be ≥ 0 (0: 32 KiB)")
	}
	if c.MaxConnections < 0 {
		l.at("server.max_connections", "server", "max_connections", "must be ≥ 0 (0: 1024)")
	}
	for i, s := range c.TrustedProxies {
		if _, err := parsePrefix(s); err != nil {
			l.at(fmt.Sprintf("server.trusted_proxies[%d]", i), "server", fmt.Sprintf("trusted_proxies[%d]", i), err.Error())
		}
	}
	u := c.Unverified
	if u.MaxInflightBytes < 0 || (u.MaxInflightBytes > 0 && u.MaxInflightBytes < c.MaxBodyBytes) {
		l.at("server.unverified.max_inflight_bytes", "server", "unverified.max_inflight_bytes", "must be ≥ max_body_bytes, or one body could never be read")
	}
	if u.PerClientBytes < 0 || (u.PerClientBytes > 0 && u.PerClientBytes < c.MaxBodyBytes) {
		l.at("server.unverified.per_client_bytes", "server", "unverified.per_client_bytes", "must be ≥ max_body_bytes, or one body could never be read")
	}
	if u.ReadTimeout < 0 {
		l.at("server.unverified.read_timeout", "server", "unverified.read_timeout", "must be ≥ 0 (0: 15s)")
	}
}

func (l *loader) checkTLS(listener string, t TLSConfig) {
	field := func(f string) (string, string) { return listener + ".tls." + f, "tls." + f }
	if (t.CertFile == "") != (t.KeyFile == "") {
		doc, f := field("cert_file")
		if t.CertFile != "" {
			doc, f = field("key_file")
		}
		l.at(doc, listener, f, "cert_file and key_file go together")
	}
	auth, err := clientAuthType(t.ClientAuthType)
	if err != nil {
		doc, f := field("client_auth_type")
		l.at(doc, listener, f, err.Error())
	}
	needsCA := auth == tls.VerifyClientCertIfGiven || auth == tls.RequireAndVerifyClientCert
	if t.CertFile == "" && (t.ClientCAFile != "" || t.ClientAuthType != "") {
		doc, f := field("cert_file")
		l.at(doc, listener, f, "is required for client certificates")
	}
	if needsCA && t.ClientCAFile == "" {
		doc, f := field("client_ca_file")
		l.at(doc, listener, f, "is required by client_auth_type "+t.ClientAuthType)
	}
}

// minAdminToken is the shortest admin token accepted: anything shorter
// can be guessed by an attacker with time on the network.
const minAdminToken = 16

// checkAdmin checks the admin API's access settings and reads
// admin.token_file, so that a missing file is reported like any other
// config error.
func (l *loader) checkAdmin(a *AdminConfig, dir string) {
	if a.Token != "" && a.TokenFile != "" {
		l.at("admin.token_file", "admin", "token_file", "set admin.token or admin.token_file, not both")
	}
	if a.TokenFile != "" && a.Token == "" {
		tok, err := readTokenFile(configPath(dir, a.TokenFile))
		switch {
		case err != nil && !l.allowUnset:
			l.at("admin.token_file", "admin", "token_file", err.Error())
		case err == nil:
			a.fileToken = tok
			l.checkToken(a.fileToken, "admin.token_file", "token_file", "the token in it ")
		}
	}
	if a.Token != "" && !(l.allowUnset && strings.Contains(a.Token, "${")) {
		l.checkToken(a.Token, "admin.token", "token", "")
	}
	for i, h := range a.AllowedHosts {
		if h == "" || strings.ContainsAny(h, "/*@ \t") {
			l.at(fmt.Sprintf("admin.allowed_hosts[%d]", i), "admin", fmt.Sprintf("allowed_hosts[%d]", i),
				fmt.Sprintf("%q is not a host name (want e.g. labelpipe-admin.internal; no scheme, path or wildcard)", h))
		}
	}
	if a.TraceURL != "" {
		u, err := url.Parse(strings.ReplaceAll(a.TraceURL, "{trace_id}", "x"))
		switch {
		case !strings.Contains(a.TraceURL, "{trace_id}"):
			l.at("admin.trace_url", "admin", "trace_url", fmt.Sprintf("%q has no {trace_id} (want e.g. http://jaeger:16686/trace/{trace_id})", a.TraceURL))
		case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
			l.at("admin.trace_url", "admin", "trace_url", fmt.Sprintf("%q is not an http(s) URL (want e.g. http://jaeger:16686/trace/{trace_id})", a.TraceURL))
		}
	}
	if a.Addr == "" || a.Token != "" || a.TokenFile != "" {
		return
	}
	host, _, err := net.SplitHostPort(a.Addr)
	if err != nil {
		l.at("admin.addr", "admin", "addr", fmt.Sprintf("%q is not host:port (e.g. 127.0.0.1:9090)", a.Addr))
		return
	}
	if !isLoopbackHost(host) {
		l.at("admin.addr", "admin", "addr", fmt.Sprintf(
			"%q is reachable from other machines, and the admin API can replay and purge dead letters; "+
				"set admin.token (e.g. ${LABELPIPE_ADMIN_TOKEN}) or admin.token_file, or bind 127.0.0.1", a.Addr))
	}
}

// checkToken refuses a token that is too short to be secret or that
// cannot travel in an Authorization header. The token itself is never
// printed.
func (l *loader) checkToken(tok, docPath, field, prefix string) {
	if problem := tokenProblem(tok); problem != "" {
		l.at(docPath, "admin", field, prefix+problem)
	}
}

// readTokenFile reads an admin token file, without its final newline.
func readTokenFile(path string) (string, error) {
	data, err := os.ReadFile(path)
	return strings.TrimRight(string(data), "\r\n"), err
}

// tokenProblem says what is wrong with an admin token, or "".
func tokenProblem(tok string) string {
	switch {
	case tok == "":
		return "is empty"
	case strings.IndexFunc(tok, func(r rune) bool { return r <= ' ' || r == 0x7f }) >= 0:
		return "holds spaces or control characters; it could not be sent as Authorization: Bearer"
	case len(tok) < minAdminToken:
		return fmt.Sprintf("is shorter than %d characters (make one with: openssl rand -hex 32)", minAdminToken)
	}
	return ""
}
