package stages

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/pipeline/backend"
)

// The dedupe stage answers 200 {"status":"duplicate"} for an export it has
// already accepted within `ttl`, naming the first export's id.
//
// The first sighting of a key reserves it with the export's id,
// provisionally, for `hold`. Once the export is stored on the broker the
// pipeline confirms the reservation, and from then on, for `ttl`, a repeat
// is answered "duplicate". A repeat that arrives while the reservation is
// still provisional is answered 503 with Retry-After: the first export may
// yet fail to be stored. If it cannot be published, the pipeline calls
// Release and the key is given back at once; if its process dies first,
// the reservation lapses after `hold`. Either way the caller's retry is
// accepted, never swallowed as a duplicate of an export that was lost.
//
// The default key is a SHA-256 of (event, project, issue id, sorted element
// ids), so re-exporting the same elements of an issue is a duplicate and
// exporting a different selection is not. Payloads without an issue id are
// keyed by a SHA-256 of the whole payload. When an earlier secret stage
// verified a Standard Webhooks signature, the default is the webhook-id
// instead: the signature covers it, and the sender gives a retry the same
// id and a new message a new one. A `key` jq program replaces
// that; it sees `.` (the payload) and `$export` (id, event, project,
// issue_id and attrs, e.g. $export.attrs.webhook_id from the secret
// stage), and may yield null or "" to let an export through unchecked.
//
// The memory store is per process; replicas must share the redis store.
//
//	- type: dedupe
//	  store: redis
//	  ttl: 24h

// Dedupe store kinds and store-error policies.
const (
	StoreMemory = "memory"
	StoreRedis  = "redis"

	OnStoreErrorReject = "reject"
	OnStoreErrorAllow  = "allow"
)

// AttrDedupeKey is the attribute holding the key the last dedupe stage
// reserved; jq programs of later stages see it as $export.attrs.dedupe_key.
const AttrDedupeKey = pipeline.AttrDedupeKey

// dedupeRetryAfter is the Retry-After sent when the store is unavailable.
const dedupeRetryAfter = 5 * time.Second

// DedupeConfig configures the dedupe stage.
type DedupeConfig struct {
	// Store keeps the keys: memory (default; this process only) or redis
	// (shared by replicas; needs redis.url).
	Store string `yaml:"store"`
	// TTL is how long a key is remembered once its export is stored;
	// default 24h.
	TTL time.Duration `yaml:"ttl"`
	// Hold is how long a key waits for its export to be stored before it
	// lapses; default 1m. A repeat within it is answered 503 with
	// Retry-After, not "duplicate", because the first export may yet fail
	// to be stored (or its replica may die). It must cover the rest of the
	// stages and broker.queue_wait.
	Hold time.Duration `yaml:"hold"`
	// Key is a jq program yielding the dedupe key; default the verified
	// webhook-id (scheme standard_webhooks), else a hash of (event,
	// project, issue id, sorted element ids).
	Key string `yaml:"key"`
	// KeyPrefix starts every Redis key; default "labelpipe:dedupe:".
	KeyPrefix string `yaml:"key_prefix"`
	// OnStoreError is what happens when the store fails: reject (default;
	// 503 with Retry-After, so the caller retries) or allow (log a warning
	// and pass the export unchecked).
	OnStoreError string `yaml:"on_store_error"`
}

// DedupeDefaults returns the dedupe stage's default config.
func DedupeDefaults() *DedupeConfig {
	return &DedupeConfig{
		Store:        StoreMemory,
		TTL:          24 * time.Hour,
		Hold:         time.Minute,
		KeyPrefix:    "labelpipe:dedupe:",
		OnStoreError: OnStoreErrorReject,
	}
}

// KeyStore names the backend that keeps the keys, so that the engine can
// refuse a store that outlives an in-process broker.
func (c *DedupeConfig) KeyStore() string { return c.Store }

// KeyHold is how long a key is held before its export is stored.
func (c *DedupeConfig) KeyHold() time.Duration { return c.Hold }

// Validate checks the config without I/O.
func (c *DedupeConfig) Validate() error {
	var errs []error
	switch c.Store {
	case StoreMemory, StoreRedis:
	default:
		errs = append(errs, pipeline.FieldErr("store", "unknown store %q (want memory or redis)", c.Store))
	}
	if c.TTL < time.Millisecond {
		errs = append(errs, pipeline.FieldErr("ttl", "must be ≥ 1ms"))
	}
	if c.Hold < time.Millisecond {
		errs = append(errs, pipeline.FieldErr("hold", "must be ≥ 1ms"))
	}
	if c.Key != "" {
		if _, err := pipeline.CompileJQ(c.Key); err != nil {
			errs = append(errs, pipeline.FieldErr("key", "%v", err))
		}
	}
	switch c.OnStoreError {
	case OnStoreErrorReject, OnStoreErrorAllow:
	default:
		errs = append(errs, pipeline.FieldErr("on_store_error", "unknown policy %q (want reject or allow)", c.OnStoreError))
	}
	return errors.Join(errs...)
}

func buildDedupe(c *DedupeConfig, env pipeline.Env) (pipeline.Stage, error) {
	d := &Dedupe{
		name:   env.Name,
		attr:   AttrDedupeKey + ":" + env.Name,
		allow:  c.OnStoreError == OnStoreErrorAllow,
		logger: env.Logger,
	}
	if d.logger == nil {
		d.logger = slog.New(slog.DiscardHandler)
	}
	if c.Key != "" {
		prog, err := pipeline.CompileJQ(c.Key)
		if err != nil {
			return nil, fmt.Errorf("key: %w", err)
		}
		d.key = prog
	}
	if env.DedupeStore == nil {
		return nil, errors.New("no dedupe store: the stage is built outside a pipeline (set Env.DedupeStore)")
	}
	// In a preview the pipeline hands out a private, empty store: the
	// verdict a first delivery gets, touching nothing shared.
	store, err := env.DedupeStore(c.Store, c.KeyPrefix, c.TTL, c.Hold)
	if err != nil {
		return nil, fmt.Errorf("dedupe store %s: %w", c.Store, err)
	}
	d.store = store
	return d, nil
}

// Dedupe is the dedupe stage.
type Dedupe struct {
	name string
	// attr is this stage's own attribute for its key; AttrDedupeKey holds
	// the last dedupe stage's only, and a pipeline may have more than one.
	attr   string
	store  backend.DedupeStore
	key    *pipeline.JQ // nil: the default key
	allow  bool
	logger *slog.Logger
}

// Process reserves the export's key, or answers duplicate when another
// export holds it.
func (d *Dedupe) Process(ctx context.Context, e *pipeline.Export) error {
	key, err := d.keyOf(ctx, e)
	if err != nil {
		return err
	}
	if key == "" {
		return nil
	}
	h, reserved, err := d.store.Reserve(ctx, key, e.ID)
	if err != nil {
		return d.storeFailed(ctx, e, err)
	}
	// h.ID == e.ID: the same export came through again (a redelivery);
	// it keeps its own reservation.
	if !reserved && h.ID != e.ID {
		return d.held(h)
	}
	e.SetAttr(AttrDedupeKey, key)
	e.SetAttr(d.attr, key)
	return nil
}

// Preview gives Process's verdict without reserving anything.
func (d *Dedupe) Preview(ctx context.Context, e *pipeline.Export) error {
	key, err := d.keyOf(ctx, e)
	if err != nil {
		return err
	}
	if key == "" {
		return nil
	}
	h, held, err := d.store.Holder(ctx, key)
	if err != nil {
		return d.storeFailed(ctx, e, err)
	}
	if held && h.ID != e.ID {
		return d.held(h)
	}
	return nil
}

// held answers a repeat of an export that holds the key: a duplicate once
// that export is stored, "try again shortly" while it is being stored.
func (d *Dedupe) held(h backend.Hold) error {
	if h.Confirmed {
		return pipeline.Duplicate(h.ID)
	}
	return pipeline.Unavailable(dedupeRetryAfter, nil,
		"an identical export (%s) is being stored right now; retry shortly", h.ID)
}

// storeFailed applies on_store_error.
func (d *Dedupe) storeFailed(ctx context.Context, e *pipeline.Export, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("dedupe %s: %w", d.name, ctx.Err())
	}
	if d.allow {
		d.logger.WarnContext(ctx, "dedupe store unavailable; passing the export without a duplicate check",
			"export", e.ID, "error", err)
		return nil
	}
	return pipeline.Unavailable(dedupeRetryAfter, err,
		"Redis is unavailable, so duplicates cannot be checked; try again later")
}

// Confirm makes e's reservation final now that e is stored.
func (d *Dedupe) Confirm(ctx context.Context, e *pipeline.Export) error {
	key := e.Attrs[d.attr]
	if key == "" {
		return nil
	}
	if err := d.store.Confirm(ctx, key, e.ID); err != nil {
		return fmt.Errorf("dedupe %s: confirm key: %w", d.name, err)
	}
	return nil
}

// Release gives back the key e reserved, if e still holds it, so that a
// retry of an export that was not published is accepted.
func (d *Dedupe) Release(ctx context.Context, e *pipeline.Export) error {
	key := e.Attrs[d.attr]
	if key == "" {
		return nil
	}
	if err := d.store.Release(ctx, key, e.ID); err != nil {
		return fmt.Errorf("dedupe %s: release key: %w", d.name, err)
	}
	return nil
}

func (d *Dedupe) keyOf(ctx context.Context, e *pipeline.Export) (string, error) {
	if d.key == nil {
		// Set by the secret stage only once the signature over it checked.
		if id := e.Attrs[pipeline.AttrWebhookID]; id != "" {
			return WebhookIDKey(id), nil
		}
		return DefaultDedupeKey(e.Payload), nil
	}
	vs, err := d.key.Run(ctx, e.Payload, e.Info())
	if err != nil {
		if ctx.Err() != nil {
			return "", fmt.Errorf("dedupe %s: %w", d.name, ctx.Err())
		}
		return "", pipeline.Reject(http.StatusUnprocessableEntity, "dedupe %s: key program failed: %v", d.name, err)
	}
	switch {
	case len(vs) == 0 || vs[0] == nil:
		return "", nil
	case len(vs) > 1:
		return "", pipeline.Reject(http.StatusUnprocessableEntity, "dedupe %s: key program yielded %d values, want one", d.name, len(vs))
	}
	if s, ok := vs[0].(string); ok {
		return s, nil
	}
	b, err := json.Marshal(vs[0])
	if err != nil {
		return "", pipeline.Reject(http.StatusUnprocessableEntity, "dedupe %s: key is not JSON: %v", d.name, err)
	}
	return string(b), nil
}

// DefaultDedupeKey is the hex SHA-256 of (event, project, issue id, sorted
// element ids) of an issue payload, and of the whole payload otherwise;
// it is pipeline.ContentKey, which the vendors' idempotency keys also
// default to.
func DefaultDedupeKey(payload any) string { return pipeline.ContentKey(payload) }

// WebhookIDKey is the default dedupe key of an export whose Standard
// Webhooks signature was verified: the hex SHA-256 of its webhook-id, so
// that a sender's id can neither collide with a content key nor make a
// Redis key of any length.
func WebhookIDKey(id string) string {
	sum := sha256.Sum256([]byte("webhook-id\x00" + id))
	return hex.EncodeToString(sum[:])
}

var (
	_ pipeline.Stage     = (*Dedupe)(nil)
	_ pipeline.Releaser  = (*Dedupe)(nil)
	_ pipeline.Confirmer = (*Dedupe)(nil)
	_ pipeline.Previewer = (*Dedupe)(nil)
	_ pipeline.KeyKeeper = (*DedupeConfig)(nil)
)
