package stages_test

import (
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/internal/redistest"
	"github.com/labelpipe/labelpipe/internal/testutil"
	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/stages"
)

// dedupeStores runs f once with the memory store and once with a real
// Redis. opts are extra YAML options for the stage.
func dedupeStores(t *testing.T, f func(t *testing.T, newStage stageFactory)) {
	t.Run("memory", func(t *testing.T) {
		f(t, func(t *testing.T, opts string) pipeline.Stage {
			return mustBuild(t, "dedupe", "store: memory\n"+opts, pipeline.Env{})
		})
	})
	t.Run("redis", func(t *testing.T) {
		rdb := redistest.Start(t).Client(t)
		f(t, func(t *testing.T, opts string) pipeline.Stage {
			return mustBuild(t, "dedupe", "store: redis\n"+opts, redisEnv(rdb))
		})
	})
}

// stageFactory builds a dedupe stage with extra YAML options.
type stageFactory func(t *testing.T, opts string) pipeline.Stage

// stored confirms e's reservation, as the pipeline does once e is on the
// broker.
func stored(t *testing.T, s pipeline.Stage, e *pipeline.Export) {
	t.Helper()
	if err := s.(pipeline.Confirmer).Confirm(t.Context(), e); err != nil {
		t.Fatalf("Confirm %s: %v", e.ID, err)
	}
}

// checkBeingStored fails unless err says an identical export, id, is being
// stored: 503 with Retry-After, not a duplicate.
func checkBeingStored(t *testing.T, err error, id string) {
	t.Helper()
	se := stageErr(t, err)
	if se.Verdict != pipeline.VerdictUnavailable || se.RetryAfter <= 0 || !strings.Contains(se.Msg, id) {
		t.Fatalf("verdict %v retry after %v %q, want unavailable naming %s", se.Verdict, se.RetryAfter, se.Msg, id)
	}
}

// checkDuplicate fails unless err is a duplicate of id.
func checkDuplicate(t *testing.T, err error, of string) {
	t.Helper()
	se := stageErr(t, err)
	if se.Verdict != pipeline.VerdictDuplicate || se.DuplicateOf != of {
		t.Fatalf("verdict %v duplicate of %q, want duplicate of %q", se.Verdict, se.DuplicateOf, of)
	}
}

func TestDedupeDuplicates(t *testing.T) {
	frames := samplePayload(t, "issue-frames.json")
	tests := []struct {
		name   string
		second []byte
		dup    bool
	}{
		{"same payload", frames, true},
		{"same elements in another order", mutate(t, frames, `.issue.elements |= reverse`), true},
		{"same elements, other metadata", mutate(t, frames, `.issue.elements[0].frame_data.weather = "sun"`), true},
		{"one element fewer", mutate(t, frames, `.issue.elements |= .[1:]`), false},
		{"another issue", mutate(t, frames, `.issue.id = "issue_other"`), false},
		{"another project", mutate(t, frames, `.project = "other"`), false},
	}
	dedupeStores(t, func(t *testing.T, newStage stageFactory) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				s := newStage(t, "key_prefix: '"+t.Name()+":'")
				first := newExport(t, frames, nil)
				err := s.Process(t.Context(), first)
				passed(t, first, err)
				stored(t, s, first)
				if first.Attrs[stages.AttrDedupeKey] != stages.DefaultDedupeKey(first.Payload) {
					t.Fatalf("attr %s = %q, want the default key", stages.AttrDedupeKey, first.Attrs[stages.AttrDedupeKey])
				}

				second := newExport(t, tt.second, nil)
				err = s.Process(t.Context(), second)
				if tt.dup {
					checkDuplicate(t, err, first.ID)
					if _, ok := second.Attrs[stages.AttrDedupeKey]; ok {
						t.Fatal("a duplicate recorded a dedupe key")
					}
				} else {
					passed(t, second, err)
				}
			})
		}
	})
}

func TestDedupeRedisKeys(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	tests := []struct {
		name, opts, prefix string
	}{
		{"default prefix", "", "labelpipe:dedupe:"},
		{"custom prefix", "key_prefix: 'acme:dd:'", "acme:dd:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := mustBuild(t, "dedupe", "store: redis\nttl: 1h\n"+tt.opts, redisEnv(rdb))
			e := newExport(t, mutate(t, samplePayload(t, "issue-crops.json"), `.issue.id = "`+tt.name+`"`), nil)
			err := s.Process(t.Context(), e)
			passed(t, e, err)
			key := tt.prefix + e.Attrs[stages.AttrDedupeKey]
			// Provisional until stored: "?<id>", for the hold (1m).
			if got, err := rdb.Get(t.Context(), key).Result(); err != nil || got != "?"+e.ID {
				t.Fatalf("GET %s = %q, %v; want a provisional hold by %q", key, got, err, e.ID)
			}
			if hold, err := rdb.PTTL(t.Context(), key).Result(); err != nil || hold <= 59*time.Second || hold > time.Minute {
				t.Fatalf("PTTL %s = %v, %v; want about the 1m hold", key, hold, err)
			}
			stored(t, s, e)
			if got, err := rdb.Get(t.Context(), key).Result(); err != nil || got != e.ID {
				t.Fatalf("GET %s = %q, %v; want the export id %q", key, got, err, e.ID)
			}
			ttl, err := rdb.PTTL(t.Context(), key).Result()
			if err != nil || ttl <= 59*time.Minute || ttl > time.Hour {
				t.Fatalf("PTTL %s = %v, %v; want about 1h", key, ttl, err)
			}
		})
	}
}

func TestDedupeTTLExpiry(t *testing.T) {
	const ttl = 150 * time.Millisecond
	dedupeStores(t, func(t *testing.T, newStage stageFactory) {
		s := newStage(t, "ttl: 150ms")
		body := samplePayload(t, "issue-frames.json")
		start := time.Now()
		first := newExport(t, body, nil)
		err := s.Process(t.Context(), first)
		passed(t, first, err)
		stored(t, s, first)

		// Poll until a repeat is accepted: it must be, and not before ttl.
		deadline := time.Now().Add(5 * time.Second)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			e := newExport(t, body, nil)
			err := s.Process(t.Context(), e)
			if err == nil {
				passed(t, e, err)
				// Redis expires on its own clock; allow it a little slack.
				if elapsed := time.Since(start); elapsed < ttl-10*time.Millisecond {
					t.Fatalf("repeat accepted after %v, before the ttl of %v", elapsed, ttl)
				}
				return
			}
			checkDuplicate(t, err, first.ID)
			if time.Now().After(deadline) {
				t.Fatalf("repeat still a duplicate %v after a ttl of %v", time.Since(start), ttl)
			}
			<-tick.C
		}
	})
}

func TestDedupeRelease(t *testing.T) {
	body := samplePayload(t, "issue-frames.json")
	dedupeStores(t, func(t *testing.T, newStage stageFactory) {
		t.Run("release lets the retry through", func(t *testing.T) {
			s := newStage(t, "key_prefix: 'release1:'")
			first := newExport(t, body, nil)
			err := s.Process(t.Context(), first)
			passed(t, first, err)
			stored(t, s, first)
			if err := s.(pipeline.Releaser).Release(t.Context(), first); err != nil {
				t.Fatalf("Release: %v", err)
			}
			retry := newExport(t, body, nil)
			err = s.Process(t.Context(), retry)
			passed(t, retry, err)
			stored(t, s, retry)
			// The retry now holds the key.
			err = s.Process(t.Context(), newExport(t, body, nil))
			checkDuplicate(t, err, retry.ID)
		})
		t.Run("release by a non-holder keeps the key", func(t *testing.T) {
			s := newStage(t, "key_prefix: 'release2:'")
			first := newExport(t, body, nil)
			err := s.Process(t.Context(), first)
			passed(t, first, err)
			stored(t, s, first)
			dup := newExport(t, body, nil)
			err = s.Process(t.Context(), dup)
			checkDuplicate(t, err, first.ID)

			// The duplicate reserved nothing; an export claiming the key
			// under another id must not free it either. The impostor
			// carries every attribute the holder got (the shared
			// dedupe_key and the stage's own), so Release does reach the
			// store, with an id that does not hold the key.
			impostor := newExport(t, body, nil)
			if len(first.Attrs) < 2 {
				t.Fatalf("holder attrs = %v, want dedupe_key and the stage's own key", first.Attrs)
			}
			for k, v := range first.Attrs {
				impostor.SetAttr(k, v)
			}
			for _, e := range []*pipeline.Export{dup, impostor} {
				if err := s.(pipeline.Releaser).Release(t.Context(), e); err != nil {
					t.Fatalf("Release: %v", err)
				}
			}
			err = s.Process(t.Context(), newExport(t, body, nil))
			checkDuplicate(t, err, first.ID)
		})
		t.Run("same export twice keeps its reservation", func(t *testing.T) {
			s := newStage(t, "key_prefix: 'release3:'")
			e := newExport(t, body, nil)
			err := s.Process(t.Context(), e)
			passed(t, e, err)
			err = s.Process(t.Context(), e)
			passed(t, e, err)
		})
	})
}

func TestDedupeConcurrentFirstSightings(t *testing.T) {
	body := samplePayload(t, "issue-10-elements.json")
	dedupeStores(t, func(t *testing.T, newStage stageFactory) {
		s := newStage(t, "key_prefix: 'concurrent:'")
		const n = 16
		exports := make([]*pipeline.Export, n)
		for i := range exports {
			exports[i] = newExport(t, body, nil)
		}
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range exports {
			wg.Go(func() { errs[i] = s.Process(t.Context(), exports[i]) })
		}
		wg.Wait()
		var winner string
		for i, err := range errs {
			if err == nil {
				if winner != "" {
					t.Fatalf("both %s and %s were accepted", winner, exports[i].ID)
				}
				winner = exports[i].ID
			}
		}
		if winner == "" {
			t.Fatal("no export was accepted")
		}
		// Until the winner is stored, the others are told to retry.
		for _, err := range errs {
			if err != nil {
				checkBeingStored(t, err, winner)
			}
		}
		for _, e := range exports {
			if e.ID == winner {
				stored(t, s, e)
			}
		}
		checkDuplicate(t, s.Process(t.Context(), newExport(t, body, nil)), winner)
	})
}

// An export whose reservation was never confirmed (its process died
// between the dedupe stage and the publish) must never make a retry a
// "duplicate": the retry is told to come back while the reservation is
// provisional, and is accepted once it lapses.
func TestDedupeUnstoredExportIsNeverADuplicate(t *testing.T) {
	body := samplePayload(t, "issue-frames.json")
	dedupeStores(t, func(t *testing.T, newStage stageFactory) {
		const hold = 300 * time.Millisecond
		opts := "key_prefix: 'unstored:'\nhold: " + hold.String()
		alive := newStage(t, opts)
		lost := newExport(t, body, nil)
		passed(t, lost, alive.Process(t.Context(), lost))
		reserved := time.Now()
		// ... and the process dies: no publish, no Confirm, no Release.

		retry := newExport(t, body, nil)
		err := alive.Process(t.Context(), retry)
		if time.Since(reserved) < hold {
			checkBeingStored(t, err, lost.ID)
		}
		deadline := time.Now().Add(10 * time.Second)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for err != nil {
			if se := stageErr(t, err); se.Verdict == pipeline.VerdictDuplicate {
				t.Fatalf("retry of an export that was never stored answered duplicate of %s", se.DuplicateOf)
			}
			if time.Now().After(deadline) {
				t.Fatalf("retry still refused 10s after a hold of %s: %v", hold, err)
			}
			<-tick.C
			retry = newExport(t, body, nil)
			err = alive.Process(t.Context(), retry)
		}
		if since := time.Since(reserved); since < hold {
			t.Fatalf("retry accepted %s after the reservation, before its hold of %s lapsed", since, hold)
		}
		stored(t, alive, retry)
		checkDuplicate(t, alive.Process(t.Context(), newExport(t, body, nil)), retry.ID)
	})
}

func TestDedupeCustomKey(t *testing.T) {
	body := samplePayload(t, "issue-frames.json")
	withWebhookID := func(id string) *pipeline.Export {
		e := newExport(t, body, nil)
		if id != "" {
			e.SetAttr("webhook_id", id)
		}
		return e
	}
	dedupeStores(t, func(t *testing.T, newStage stageFactory) {
		s := newStage(t, `key: '$export.attrs.webhook_id'`+"\nkey_prefix: 'custom:'")
		first := withWebhookID("msg_1")
		err := s.Process(t.Context(), first)
		passed(t, first, err)
		stored(t, s, first)
		if first.Attrs[stages.AttrDedupeKey] != "msg_1" {
			t.Fatalf("key = %q, want msg_1", first.Attrs[stages.AttrDedupeKey])
		}
		err = s.Process(t.Context(), withWebhookID("msg_1"))
		checkDuplicate(t, err, first.ID)

		other := withWebhookID("msg_2")
		err = s.Process(t.Context(), other)
		passed(t, other, err)

		// No key (null): passed on unchecked, every time.
		for range 2 {
			e := withWebhookID("")
			err := s.Process(t.Context(), e)
			passed(t, e, err)
			if _, ok := e.Attrs[stages.AttrDedupeKey]; ok {
				t.Fatal("an unchecked export recorded a dedupe key")
			}
		}
	})

	tests := []struct {
		name, key, want string
	}{
		{"several values", `.issue.elements[].element_id`, "dedupe dedupe: key program yielded 3 values, want one"},
		{"run-time error", `.issue.id | tonumber`, "dedupe dedupe: key program failed: jq: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := mustBuild(t, "dedupe", "key: '"+tt.key+"'", pipeline.Env{})
			err := s.Process(t.Context(), newExport(t, body, nil))
			se := stageErr(t, err)
			if se.Status != http.StatusUnprocessableEntity || !strings.HasPrefix(se.Msg, tt.want) {
				t.Fatalf("error = %d %q, want 422 %q", se.Status, se.Msg, tt.want)
			}
		})
	}
}

func TestDedupeRedisDown(t *testing.T) {
	body := samplePayload(t, "issue-frames.json")
	tests := []struct {
		name   string
		policy string
		pass   bool
	}{
		{"reject answers 503", "reject", false},
		{"allow passes with a warning", "allow", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := redistest.Start(t)
			var logs testutil.LockedBuffer
			logger := slog.New(slog.NewTextHandler(&logs, nil))
			env := redisEnv(srv.Client(t))
			env.Logger = logger
			s := mustBuild(t, "dedupe", "store: redis\non_store_error: "+tt.policy, env)

			first := newExport(t, body, nil)
			err := s.Process(t.Context(), first)
			passed(t, first, err)

			srv.Stop()
			e := newExport(t, mutate(t, body, `.issue.id = "while-down"`), nil)
			err = s.Process(t.Context(), e)
			if tt.pass {
				passed(t, e, err)
				got := logs.String()
				if !strings.Contains(got, "level=WARN") || !strings.Contains(got, "dedupe store unavailable") {
					t.Fatalf("log = %q, want a warning about the store", got)
				}
			} else {
				se := stageErr(t, err)
				if se.Verdict != pipeline.VerdictUnavailable || se.RetryAfter != 5*time.Second ||
					!strings.Contains(se.Msg, "Redis is unavailable") {
					t.Fatalf("error = verdict %v retry-after %v %q; want unavailable, 5s, Redis is unavailable",
						se.Verdict, se.RetryAfter, se.Msg)
				}
				if _, ok := e.Attrs[stages.AttrDedupeKey]; ok {
					t.Fatal("a rejected export recorded a dedupe key")
				}
			}

			// Back up (without persistence, so the first key is gone).
			srv.Restart()
			again := newExport(t, body, nil)
			err = s.Process(t.Context(), again)
			passed(t, again, err)
		})
	}
}

func TestDedupeBuild(t *testing.T) {
	t.Run("redis without redis.url", func(t *testing.T) {
		_, err := build(t, "dedupe", "store: redis", redisEnv(nil))
		if err == nil || err.Error() != "dedupe store redis: backend redis needs redis.url in the config" {
			t.Fatalf("build without Redis = %v", err)
		}
	})
	t.Run("no Env.DedupeStore", func(t *testing.T) {
		// build supplies a DedupeStore when the Env has none; a stage
		// built outside a pipeline gets none, and must say so.
		cfg, err := decode(t, "dedupe", "")
		if err != nil {
			t.Fatalf("dedupe defaults are invalid: %v", err)
		}
		st, _ := registry().Stage("dedupe")
		s, err := st.Build(cfg, pipeline.Env{Name: "dedupe"})
		if err == nil || !strings.Contains(err.Error(), "Env.DedupeStore") {
			t.Fatalf("build without Env.DedupeStore = %v, %v; want an error naming Env.DedupeStore", s, err)
		}
	})
}

func TestDedupeValidate(t *testing.T) {
	tests := []struct {
		name, opts string
		want       []string
	}{
		{"defaults", "", nil},
		{"redis", "store: redis\nttl: 1h\nkey: .issue.id\non_store_error: allow", nil},
		{"unknown store", "store: etcd", []string{`store: unknown store "etcd" (want memory or redis)`}},
		{"zero ttl", "ttl: 0s", []string{"ttl: must be ≥ 1ms"}},
		{"bad key", "key: '.issue.'", []string{"key: invalid jq: "}},
		{"bad policy", "on_store_error: drop", []string{`on_store_error: unknown policy "drop" (want reject or allow)`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decode(t, "dedupe", tt.opts)
			got := fieldErrors(t, err)
			if len(got) != len(tt.want) {
				t.Fatalf("Validate() = %q, want %q", got, tt.want)
			}
			for i := range got {
				if !strings.HasPrefix(got[i], tt.want[i]) {
					t.Fatalf("Validate() = %q, want %q", got, tt.want)
				}
			}
		})
	}
}

func TestDefaultDedupeKey(t *testing.T) {
	frames := samplePayload(t, "issue-frames.json")
	key := func(body []byte) string { return stages.DefaultDedupeKey(newExport(t, body, nil).Payload) }
	base := key(frames)
	if len(base) != 64 || strings.Trim(base, "0123456789abcdef") != "" {
		t.Fatalf("key %q is not hex SHA-256", base)
	}
	tests := []struct {
		name string
		body []byte
		same bool
	}{
		{"same", frames, true},
		{"reordered elements", mutate(t, frames, `.issue.elements |= reverse`), true},
		{"other event", mutate(t, frames, `.event = "issue-exported-v2"`), false},
		{"other element ids", mutate(t, frames, `.issue.elements[0].element_id = "x"`), false},
		{"id moved between fields", mutate(t, frames, `.project = .project + .issue.id | .issue.id = ""`), false},
		{"test payload", samplePayload(t, "test-payload.json"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := key(tt.body); (got == base) != tt.same {
				t.Fatalf("key = %s, base %s, want same=%v", got, base, tt.same)
			}
		})
	}
	// Keys outlive a release in Redis, so their derivation is pinned here,
	// computed independently of the code under test.
	pinned := func(prefix, doc string) string {
		h := sha256.Sum256([]byte(prefix + doc))
		return hex.EncodeToString(h[:])
	}
	if want := pinned("issue\x00", `["issue-exported","pedestrian_detection","issue_7f3c2a9e",["frame_000481","frame_000482","frame_000517"]]`); base != want {
		t.Errorf("key of issue-frames.json = %s, want %s (event, project, issue id, sorted element ids)", base, want)
	}

	// Without an issue id the key is the content's: the same document in
	// another key order and layout keys the same, any other content not.
	test := samplePayload(t, "test-payload.json")
	canonical := `{"dataset":{"id":"pedestrians_2024_06","name":"pedestrians_2024_06","status":"DONE"},"event":"dataset-complete","project":"pedestrian_detection"}`
	if got, want := key(test), pinned("payload\x00", canonical); got != want {
		t.Errorf("key of test-payload.json = %s, want %s", got, want)
	}
	reordered := []byte(`{ "project": "pedestrian_detection",
		"dataset": {"status": "DONE", "name": "pedestrians_2024_06", "id": "pedestrians_2024_06"},
		"event": "dataset-complete" }`)
	if key(reordered) != key(test) {
		t.Error("the same payload without an issue, reordered, keys differently")
	}
	for _, m := range []string{`.project = "other"`, `.dataset.status = "RUNNING"`, `.dataset.extra = 1`} {
		if key(mutate(t, test, m)) == key(test) {
			t.Errorf("payload without an issue after %s keys the same: its content is not all in the key", m)
		}
	}
}

func TestDedupePreviewReservesNothing(t *testing.T) {
	body := samplePayload(t, "issue-crops.json")
	dedupeStores(t, func(t *testing.T, newStage stageFactory) {
		s := newStage(t, "key_prefix: 'preview:'")
		pv, ok := s.(pipeline.Previewer)
		if !ok {
			t.Fatal("dedupe is not a pipeline.Previewer")
		}
		for range 2 {
			e := newExport(t, body, nil)
			err := pv.Preview(t.Context(), e)
			passed(t, e, err)
		}
		first := newExport(t, body, nil)
		err := s.Process(t.Context(), first)
		passed(t, first, err)
		stored(t, s, first)

		err = pv.Preview(t.Context(), newExport(t, body, nil))
		checkDuplicate(t, err, first.ID)
	})

	t.Run("redis down", func(t *testing.T) {
		srv := redistest.Start(t)
		s := mustBuild(t, "dedupe", "store: redis", redisEnv(srv.Client(t)))
		srv.Stop()
		err := s.(pipeline.Previewer).Preview(t.Context(), newExport(t, body, nil))
		if se := stageErr(t, err); se.Verdict != pipeline.VerdictUnavailable {
			t.Fatalf("verdict = %v, want unavailable", se.Verdict)
		}
	})
}

func TestDedupeDefaultsToVerifiedWebhookID(t *testing.T) {
	frames := samplePayload(t, "issue-frames.json")
	crops := samplePayload(t, "issue-crops.json")
	signedOpts := "scheme: standard_webhooks\nsecrets: [" + whsec("key-one") + "]"
	headerOpts := "secrets: [plain-secret]"
	// sent is one webhook: its webhook-id header and body.
	type sent struct {
		id   string
		body []byte
	}
	tests := []struct {
		name          string
		secret        string // the secret stage's options
		first, second sent
		dup           bool
	}{
		{"signed retry: same id", signedOpts, sent{"msg_1", frames}, sent{"msg_1", frames}, true},
		{"signed, new id, same content: a new message", signedOpts, sent{"msg_1", frames}, sent{"msg_2", frames}, false},
		{"signed, same id, other content: a retry by id", signedOpts, sent{"msg_1", frames}, sent{"msg_1", crops}, true},
		// Without a signature over it the header proves nothing: content decides.
		{"unsigned, new id, same content", headerOpts, sent{"msg_1", frames}, sent{"msg_2", frames}, true},
		{"unsigned, same id, other content", headerOpts, sent{"msg_1", frames}, sent{"msg_1", crops}, false},
	}
	dedupeStores(t, func(t *testing.T, newStage stageFactory) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				secret := mustBuild(t, "secret", tt.secret, pipeline.Env{})
				dedupe := newStage(t, "key_prefix: '"+t.Name()+":'")
				ts := time.Now().Unix()
				arrive := func(s sent) (*pipeline.Export, error) {
					h := http.Header{}
					h.Set("X-Aquarium-Secret", "plain-secret")
					h.Set("webhook-id", s.id)
					h.Set("webhook-timestamp", strconv.FormatInt(ts, 10))
					h.Set("webhook-signature", swSign("key-one", s.id, ts, s.body))
					e := newExport(t, s.body, h)
					if err := secret.Process(t.Context(), e); err != nil {
						t.Fatalf("secret stage: %v", err)
					}
					return e, dedupe.Process(t.Context(), e)
				}
				first, err := arrive(tt.first)
				passed(t, first, err)
				stored(t, dedupe, first)
				second, err := arrive(tt.second)
				if tt.dup {
					checkDuplicate(t, err, first.ID)
				} else {
					passed(t, second, err)
				}
				want := stages.DefaultDedupeKey(first.Payload)
				if tt.secret == signedOpts {
					want = stages.WebhookIDKey(tt.first.id)
				}
				if got := first.Attrs[stages.AttrDedupeKey]; got != want {
					t.Errorf("dedupe key = %q, want %q", got, want)
				}
			})
		}
	})
}
