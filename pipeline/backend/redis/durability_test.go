package redis_test

import (
	"strings"
	"testing"

	"github.com/labelpipe/labelpipe/internal/redistest"
	"github.com/labelpipe/labelpipe/pipeline"
	redisb "github.com/labelpipe/labelpipe/pipeline/backend/redis"
)

func TestDurabilityRisks(t *testing.T) {
	for _, tt := range []struct {
		name string
		d    redisb.Durability
		want []string // a fragment of each risk, in order
	}{
		{"aof", redisb.Durability{AOF: true, SnapshotsKnown: true, EvictionPolicy: "noeviction"}, nil},
		{"snapshots only", redisb.Durability{Snapshots: "3600 1", SnapshotsKnown: true, EvictionPolicy: "noeviction"}, nil},
		{"nothing persisted", redisb.Durability{SnapshotsKnown: true, EvictionPolicy: "noeviction"}, []string{"persists nothing"}},
		{"snapshots unknown", redisb.Durability{EvictionPolicy: "noeviction"}, []string{"cannot be read"}},
		{"evicts", redisb.Durability{AOF: true, EvictionPolicy: "allkeys-lru"}, []string{"maxmemory-policy is allkeys-lru"}},
		{"both", redisb.Durability{SnapshotsKnown: true, EvictionPolicy: "volatile-ttl"}, []string{"persists nothing", "volatile-ttl"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.d.Risks()
			if len(got) != len(tt.want) {
				t.Fatalf("Risks() = %q, want %d risks", got, len(tt.want))
			}
			for i, frag := range tt.want {
				if !strings.Contains(got[i], frag) {
					t.Fatalf("risk %d = %q, want it to say %q", i, got[i], frag)
				}
			}
		})
	}
}

// A real server: the risks follow its settings, and
// broker.require_persistence refuses a broker on one that could lose work.
func TestDurabilityOfARealRedis(t *testing.T) {
	srv := redistest.Start(t) // appendonly no, save ""
	rdb := srv.Client(t)
	ctx := t.Context()
	d, err := redisb.CheckDurability(ctx, rdb)
	if err != nil {
		t.Fatal(err)
	}
	if d.AOF || !d.SnapshotsKnown || d.Snapshots != "" || d.EvictionPolicy != "noeviction" {
		t.Fatalf("CheckDurability = %+v, want no AOF, no snapshots, noeviction", d)
	}

	open := func(require bool) error {
		b := redisb.New(rdb, false, redisb.Config{ReplicaID: "r1", KeyPrefix: "dur:",
			Broker: pipeline.BrokerConfig{Prefix: "dur:", RequirePersistence: require}})
		t.Cleanup(func() { _ = b.Close() })
		br, err := b.Broker()
		if err == nil {
			if risks := br.Risks(ctx); (len(risks) == 0) != (d.AOF && d.EvictionPolicy == "noeviction") {
				t.Fatalf("Risks() = %q for %+v", risks, d)
			}
		}
		return err
	}
	if err := open(false); err != nil {
		t.Fatalf("without require_persistence the broker opens and warns: %v", err)
	}
	if err := open(true); err == nil || !strings.Contains(err.Error(), "persists nothing") {
		t.Fatalf("require_persistence on a Redis without persistence = %v, want a refusal saying why", err)
	}

	if err := rdb.ConfigSet(ctx, "appendonly", "yes").Err(); err != nil {
		t.Fatal(err)
	}
	if d, err = redisb.CheckDurability(ctx, rdb); err != nil || !d.AOF {
		t.Fatalf("after appendonly yes: %+v, %v", d, err)
	}
	if err := open(true); err != nil {
		t.Fatalf("require_persistence with appendonly yes: %v", err)
	}

	if err := rdb.ConfigSet(ctx, "maxmemory-policy", "allkeys-lru").Err(); err != nil {
		t.Fatal(err)
	}
	if d, err = redisb.CheckDurability(ctx, rdb); err != nil || d.EvictionPolicy != "allkeys-lru" {
		t.Fatalf("after allkeys-lru: %+v, %v", d, err)
	}
	if err := open(true); err == nil || !strings.Contains(err.Error(), "evict") {
		t.Fatalf("require_persistence on an evicting Redis = %v, want a refusal", err)
	}

	srv.Stop()
	if err := open(true); err == nil || !strings.Contains(err.Error(), "cannot read") {
		t.Fatalf("require_persistence with Redis down = %v, want a refusal saying it cannot tell", err)
	}
	if err := open(false); err != nil {
		t.Fatalf("without require_persistence, Redis down only delays the check: %v", err)
	}
}
