package pipeline

import (
	"fmt"
	"strings"
	"time"

	"github.com/goccy/go-yaml/ast"

	"github.com/labelpipe/labelpipe/pipeline/field"
	"github.com/labelpipe/labelpipe/pipeline/resilience"
)

// Config is a whole pipeline, as loaded from one YAML file.
type Config struct {
	// Server is the webhook listener.
	Server ServerConfig `yaml:"server"`
	// Admin is the health, metrics and API listener.
	Admin AdminConfig `yaml:"admin"`
	// Broker carries exports between the ingress and the sinks.
	Broker BrokerConfig `yaml:"broker"`
	// Redis configures the shared client (broker, dedupe, ledger, breakers).
	Redis RedisConfig `yaml:"redis"`
	// Tracing configures OpenTelemetry tracing.
	Tracing TracingConfig `yaml:"tracing"`
	// Log configures the daemon's logger.
	Log LogConfig `yaml:"log"`
	// JQ bounds every jq program's run: stages, dedupe keys, filters,
	// transforms, sink bodies and previews.
	JQ JQLimits `yaml:"jq"`
	// History keeps a record of every accepted export and its requests'
	// states, for the admin API's /api/exports and the console.
	History HistoryConfig `yaml:"history"`
	// CustomEvents are event names besides Aquarium's five
	// (AquariumEvents) that sinks and stages may name, for a caller that
	// sends its own; any other name is an error.
	CustomEvents []string `yaml:"custom_events"`
	// Stages run in order, synchronously with the webhook request.
	Stages []StageConfig `yaml:"-"`
	// Sinks each receive every export they subscribe to.
	Sinks []SinkConfig `yaml:"-"`

	file     string
	dir      string
	root     *ast.File
	resolved bool
}

// HistoryConfig bounds the export history: in Redis on the redis broker,
// shared by every replica, in memory on the memory broker.
type HistoryConfig struct {
	// Enabled keeps the history; default true.
	Enabled bool `yaml:"enabled"`
	// MaxExports is how many exports are kept, newest first; default 10000.
	MaxExports int `yaml:"max_exports"`
	// TTL is how long an export is kept after it was received; default 168h (7 days).
	TTL time.Duration `yaml:"ttl"`
	// MaxPayloadBytes is the largest export body kept for a resend;
	// default 262144 (256 KiB). A larger export is listed all the same,
	// but cannot be resent. The history holds up to max_exports times
	// this in the worst case, in memory or in Redis; Redis keeps the
	// bodies zstd-compressed (export JSON shrinks to about 5–20%).
	MaxPayloadBytes int64 `yaml:"max_payload_bytes"`
}

// ServerConfig is the webhook listener.
type ServerConfig struct {
	// Addr is host:port to listen on; default 127.0.0.1:8080. Empty starts
	// no listener: an embedder mounts Handler() in its own server.
	Addr string `yaml:"addr"`
	// Path is the webhook route; default /webhook.
	Path string `yaml:"path"`
	// MaxBodyBytes caps a request body; default 32 MiB. Larger: 413.
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// MaxInflightBytes bounds the bodies being read and checked at once,
	// counted by Content-Length (max_body_bytes for a body without one).
	// An export costs about 12x its size in memory while it is checked,
	// so a burst of large ones could exhaust the process. A request over
	// the budget waits for room up to broker.queue_wait, then gets 503 and
	// Retry-After. Default 4 x max_body_bytes; at least max_body_bytes.
	MaxInflightBytes int64 `yaml:"max_inflight_bytes"`
	// ReadTimeout bounds reading one request; default 60s.
	ReadTimeout time.Duration `yaml:"read_timeout"`
	// ShutdownTimeout bounds the drain on SIGTERM; default 30s.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// MaxHeaderBytes caps a request's headers; default 32 KiB. Larger: 431.
	MaxHeaderBytes int `yaml:"max_header_bytes"`
	// MaxConnections caps open connections; default 1024. Past it new
	// connections wait in the kernel's backlog.
	MaxConnections int `yaml:"max_connections"`
	// TrustedProxies are the peers (IPs or CIDRs) whose X-Forwarded-For
	// names the client. From anyone else the header is ignored: a client
	// could claim any address to get a fresh share of the body budget.
	TrustedProxies []string `yaml:"trusted_proxies"`
	// Unverified bounds bodies read before their caller is proven: with a
	// signature scheme (only the body can prove it) or no secret stage.
	Unverified UnverifiedConfig `yaml:"unverified"`
	// TLS serves the webhook over HTTPS when cert_file is set.
	TLS TLSConfig `yaml:"tls"`
}

// UnverifiedConfig is the budget for bodies whose headers cannot prove
// the caller. It is separate from server.max_inflight_bytes, so that
// strangers' uploads never starve a caller proven by a header secret, and
// each client address gets only a share of it.
type UnverifiedConfig struct {
	// MaxInflightBytes is the budget; default server.max_inflight_bytes.
	MaxInflightBytes int64 `yaml:"max_inflight_bytes"`
	// PerClientBytes is one client address's share; default
	// max_body_bytes. Past it the client gets 503 and Retry-After.
	PerClientBytes int64 `yaml:"per_client_bytes"`
	// ReadTimeout bounds reading such a body; default 15s.
	ReadTimeout time.Duration `yaml:"read_timeout"`
}

// TLSConfig serves a listener over TLS. The names follow Prometheus's
// exporter toolkit. The files are read again on SIGHUP, so certificates
// can rotate without a restart.
type TLSConfig struct {
	// CertFile and KeyFile are PEM files; both or neither.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ClientCAFile holds the CAs client certificates are checked against.
	ClientCAFile string `yaml:"client_ca_file"`
	// ClientAuthType is NoClientCert (default), RequestClientCert,
	// RequireAnyClientCert, VerifyClientCertIfGiven or
	// RequireAndVerifyClientCert.
	ClientAuthType string `yaml:"client_auth_type"`
}

// AdminConfig is the admin listener (/healthz, /readyz, /metrics, /api).
type AdminConfig struct {
	// Addr is host:port; empty disables the admin listener. Default
	// 127.0.0.1:9090.
	Addr string `yaml:"addr"`
	// Pprof mounts Go's profiles at /debug/pprof/ on the admin listener;
	// default false. They reveal the process's memory and cost CPU, so
	// they are for measuring, on a listener only operators reach.
	Pprof bool `yaml:"pprof"`
	// TLS serves the admin API over HTTPS when cert_file is set.
	TLS TLSConfig `yaml:"tls"`
	// Token is the bearer token the admin API asks for: always for a
	// change (replay, purge), and for reads from a non-loopback peer.
	// Required when Addr is not a loopback address; at least 16
	// characters. Use ${VAR} rather than writing it here.
	Token string `yaml:"token"`
	// TokenFile holds the token instead (relative to the config file's
	// directory; read at start, a trailing newline ignored). Not with
	// Token.
	TokenFile string `yaml:"token_file"`
	// AllowedHosts are the extra Host header names the admin API answers
	// to (e.g. a DNS name in front of it). Loopback names, IP addresses
	// and Addr's host are always allowed; any other name gets 421, which
	// is what stops a DNS rebinding page from reading the API.
	AllowedHosts []string `yaml:"allowed_hosts"`
	// TraceURL links each dead letter to its trace, in the console and in
	// /api/dlq: a URL with {trace_id} where the trace id goes, e.g.
	// http://jaeger:16686/trace/{trace_id}. Default none.
	TraceURL string `yaml:"trace_url"`

	// fileToken is TokenFile's content, read while loading.
	fileToken string
}

// token is the configured admin token, from Token or TokenFile; "" for
// none.
func (a *AdminConfig) token() string {
	if a.Token != "" {
		return a.Token
	}
	return a.fileToken
}

// BrokerConfig picks the message broker.
type BrokerConfig struct {
	// Type is memory (default, not durable) or redis.
	Type string `yaml:"type"`
	// Prefix starts every Redis stream name; default "labelpipe:".
	Prefix string `yaml:"prefix"`
	// ClaimIdle is how long a pending message of a dead replica waits
	// before a living one claims it; default 60s.
	ClaimIdle time.Duration `yaml:"claim_idle"`
	// MaxLen approximately trims each stream to this many entries plus
	// whatever is not yet acknowledged; 0 keeps everything. Default 10000.
	// Trimming only ever drops entries every group has acknowledged.
	MaxLen int64 `yaml:"max_len"`
	// FanoutWorkers is how many exports are fanned out at once; default 4.
	FanoutWorkers int `yaml:"fanout_workers"`
	// MaxPending bounds, on the memory broker, the exports accepted and
	// not yet fanned out to the sinks' queues; an export counts once
	// however large. It is also reached when every sink has MaxPending
	// requests waiting: the vendors together are slower than the exports
	// arriving, and callers are slowed down rather than every queue
	// growing (one slow sink never does this). The webhook then waits for
	// room, up to QueueWait, and answers 503. Default 128. The redis
	// broker keeps its queue in Redis instead and ignores this.
	MaxPending int64 `yaml:"max_pending"`
	// RequirePersistence makes the redis broker refuse to start unless
	// Redis persists (appendonly or snapshots) and never evicts
	// (maxmemory-policy noeviction), or when that cannot be read; default
	// false, which only warns.
	RequirePersistence bool `yaml:"require_persistence"`
	// QueueWait is how long a webhook request waits for room; default 10s.
	QueueWait time.Duration `yaml:"queue_wait"`
}

// RedisConfig configures the Redis client.
type RedisConfig struct {
	// URL is redis://[user:pass@]host:port/db, rediss:// for TLS or
	// unix:///path. Required when anything uses Redis.
	URL string `yaml:"url"`
	// KeyPrefix starts every key labelpipe writes; default "labelpipe:".
	KeyPrefix string `yaml:"key_prefix"`
}

// TracingConfig configures OpenTelemetry tracing.
type TracingConfig struct {
	// Exporter is none (default), otlp or stdout.
	Exporter string `yaml:"exporter"`
	// Endpoint is the OTLP receiver: a URL like OTEL_EXPORTER_OTLP_ENDPOINT
	// (http://127.0.0.1:4317 for grpc, http://127.0.0.1:4318 for http,
	// whose bare URL means its /v1/traces; https:// for TLS) or host:port.
	// Empty uses OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT or the SDK default.
	Endpoint string `yaml:"endpoint"`
	// Protocol is grpc (default) or http.
	Protocol string `yaml:"protocol"`
	// SampleRatio is the share of new traces sampled, 0..1; default 1.
	SampleRatio *float64 `yaml:"sample_ratio"`
	// ServiceName defaults to OTEL_SERVICE_NAME, then "labelpipe".
	ServiceName string `yaml:"service_name"`
	// Insecure sends OTLP without TLS; default true for loopback use.
	Insecure *bool `yaml:"insecure"`
	// CallerContext is what a webhook's traceparent becomes: link
	// (default), a link from labelpipe's own new trace, or parent, for a
	// caller that is trusted to choose the trace. Baggage is never taken
	// from a caller.
	CallerContext string `yaml:"caller_context"`
}

// Log levels and formats.
var (
	LogLevels  = []string{"debug", "info", "warn", "error"}
	LogFormats = []string{"text", "json"}
)

// LogConfig configures the daemon's logger.
type LogConfig struct {
	// Level is debug, info (default), warn or error.
	Level string `yaml:"level"`
	// Format is text (default) or json.
	Format string `yaml:"format"`
}

// StageConfig is one entry of `stages:`.
type StageConfig struct {
	// Type names a registered stage type.
	Type string
	// Name tells stages apart in logs and traces; default the type.
	Name string
	// Options is the type's decoded config (a pointer), set by Resolve.
	Options any

	node *ast.MappingNode
	path string
}

// SinkConfig is one entry of `sinks:`: the keys every sink has, plus the
// type's own options.
type SinkConfig struct {
	// Name is unique; it names the sink's topics, logs and metrics.
	Name string `yaml:"name"`
	// Type names a registered sink type.
	Type string `yaml:"type"`
	// Events the sink receives; default [issue-exported].
	Events []string `yaml:"events"`
	// Filter is a jq predicate; the sink skips exports it is false for.
	Filter string `yaml:"filter"`
	// Timeout bounds one attempt; default 30s.
	Timeout time.Duration `yaml:"timeout"`
	// MaxInFlight is how many requests the sink has under way at once;
	// default 4.
	MaxInFlight int `yaml:"max_in_flight"`
	// Queue bounds the sink's own backlog of requests.
	Queue QueueConfig `yaml:"queue"`
	// Resilience is the rate limit, retry and breaker policy.
	resilience.Config `yaml:",inline"`
	// Options is the type's decoded config (a pointer), set by Resolve.
	Options any `yaml:"-"`

	node *ast.MappingNode
	path string
}

// QueueConfig bounds one sink's backlog: its requests queued and not yet
// delivered or dead-lettered. Each sink has its own, so a vendor that is
// down, slow or hanging fills only its own queue, and intake and the other
// sinks carry on.
type QueueConfig struct {
	// MaxRequests is how many requests the queue holds; default 10000
	// (minutes of a vendor outage at a steady few exports a second). On
	// the redis broker it counts the sink's stream across every replica.
	MaxRequests int64 `yaml:"max_requests"`
	// MaxBytes is how many bytes of request bodies the queue holds, where
	// the broker can count them cheaply (memory; the redis broker keeps
	// the queue in Redis and is bounded by max_requests only); default
	// 64 MiB.
	MaxBytes int64 `yaml:"max_bytes"`
	// OnFull is what happens to a new request while the queue is full:
	// dead_letter (default) stores it in the sink's DLQ, with an error
	// saying so, for an operator to replay; backpressure makes the fan-out
	// wait for room, so the exports queue up and new webhooks wait
	// broker.queue_wait, then get 503. Either way the other sinks carry
	// on with the exports already accepted, and it is logged, counted
	// (labelpipe.sink.queue.full) and shown as degraded in /readyz.
	OnFull string `yaml:"on_full"`
}

// On-full actions.
const (
	OnFullDeadLetter   = "dead_letter"
	OnFullBackpressure = "backpressure"
)

var sinkCommonKeys = map[string]bool{
	"name": true, "type": true, "events": true, "filter": true, "timeout": true,
	"max_in_flight": true, "queue": true, "rate_limit": true, "retry": true, "breaker": true,
}

func defaultConfig() Config {
	return Config{
		Server: ServerConfig{Addr: "127.0.0.1:8080", Path: "/webhook", MaxBodyBytes: 32 << 20,
			ReadTimeout: 60 * time.Second, ShutdownTimeout: 30 * time.Second, MaxHeaderBytes: 32 << 10, MaxConnections: 1024,
			Unverified: UnverifiedConfig{ReadTimeout: 15 * time.Second}},
		Admin: AdminConfig{Addr: "127.0.0.1:9090"},
		Broker: BrokerConfig{Type: "memory", Prefix: "labelpipe:", ClaimIdle: 60 * time.Second, MaxLen: 10000, FanoutWorkers: 4,
			MaxPending: 128, QueueWait: 10 * time.Second},
		Redis:   RedisConfig{KeyPrefix: "labelpipe:"},
		Log:     LogConfig{Level: "info", Format: "text"},
		JQ:      DefaultJQLimits(),
		History: HistoryConfig{Enabled: true, MaxExports: 10000, TTL: 7 * 24 * time.Hour, MaxPayloadBytes: 256 << 10},
	}
}

func defaultSink() SinkConfig {
	return SinkConfig{Events: []string{"issue-exported"}, Timeout: 30 * time.Second, MaxInFlight: 4,
		Queue:  QueueConfig{MaxRequests: 10000, MaxBytes: 64 << 20, OnFull: OnFullDeadLetter},
		Config: resilience.Defaults()}
}

// ConfigError is one problem in a config file, with its position.
type ConfigError struct {
	File      string
	Line, Col int
	// Path is where in the document, e.g. `sinks[1] "scale": retry.max_attempts`.
	Path string
	Msg  string
	// Err is the cause of an error found while building a stage or sink.
	Err error
}

// Unwrap returns the cause, if any.
func (e *ConfigError) Unwrap() error { return e.Err }

func (e *ConfigError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d:%d", e.Line, e.Col)
	}
	b.WriteString(": ")
	if e.Path != "" {
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// ConfigErrors is every problem found in one file, in file order.
type ConfigErrors []*ConfigError

func (es ConfigErrors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// FieldError is a validation error naming a field by its dotted path below
// the stage or sink (e.g. "retry.max_attempts" or "secrets[0]"), so that the
// loader can point at its line and column. It is defined in package field,
// a leaf that the resilience policy can use too.
type FieldError = field.Error

// FieldErr builds a *FieldError.
func FieldErr(path, format string, args ...any) error { return field.Errorf(path, format, args...) }

// DefaultConfig is a config with every default set and no stages or
// sinks: what an empty section means. The config's JSON Schema and
// reference take their defaults from it.
func DefaultConfig() Config { return defaultConfig() }

// DefaultSinkConfig is a sink's common keys with their defaults.
func DefaultSinkConfig() SinkConfig { return defaultSink() }
