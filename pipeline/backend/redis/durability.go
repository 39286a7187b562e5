package redis

import (
	"context"
	"fmt"
	"strings"

	goredis "github.com/redis/go-redis/v9"
)

// Durability is what a Redis server says about keeping accepted work: a
// Redis that persists nothing loses every queued export when it restarts,
// and one that evicts keys may drop queued exports when it fills up.
type Durability struct {
	// AOF is appendonly (INFO persistence aof_enabled).
	AOF bool
	// Snapshots is the RDB schedule (CONFIG GET save), "" when off.
	Snapshots string
	// SnapshotsKnown is false when CONFIG GET is refused (managed Redis
	// often disables it), so Snapshots could not be read.
	SnapshotsKnown bool
	// EvictionPolicy is maxmemory_policy (INFO memory).
	EvictionPolicy string
}

// CheckDurability reads INFO persistence, INFO memory and, where allowed,
// CONFIG GET save.
func CheckDurability(ctx context.Context, c goredis.UniversalClient) (Durability, error) {
	var d Durability
	info, err := c.Info(ctx, "persistence", "memory").Result()
	if err != nil {
		return d, fmt.Errorf("redis: INFO persistence, memory: %w", err)
	}
	fields := infoFields(info)
	d.AOF = fields["aof_enabled"] == "1"
	d.EvictionPolicy = fields["maxmemory_policy"]
	if save, err := c.ConfigGet(ctx, "save").Result(); err == nil {
		d.Snapshots, d.SnapshotsKnown = strings.TrimSpace(save["save"]), true
	}
	return d, nil
}

// Risks says plainly how accepted work could vanish; none when the server
// persists (AOF or snapshots) and never evicts.
func (d Durability) Risks() []string {
	var out []string
	switch {
	case d.AOF:
	case !d.SnapshotsKnown:
		out = append(out, "redis has appendonly off and its snapshot schedule cannot be read (CONFIG GET is refused): if it persists nothing, a restart of redis loses every queued export; set appendonly yes")
	case d.Snapshots == "":
		out = append(out, "redis persists nothing (appendonly no, no snapshots): a restart of redis loses every queued export; set appendonly yes")
	}
	if d.EvictionPolicy != "" && d.EvictionPolicy != "noeviction" {
		out = append(out, fmt.Sprintf("redis maxmemory-policy is %s: when it fills up it may evict queued exports; set maxmemory-policy noeviction", d.EvictionPolicy))
	}
	return out
}

// infoFields parses INFO's "key:value" lines.
func infoFields(info string) map[string]string {
	out := map[string]string{}
	for _, line := range strings.Split(info, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			out[k] = v
		}
	}
	return out
}
