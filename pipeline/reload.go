package pipeline

// Live config reload: ReloadConfig checks a new config the way validate
// does, then swaps what may change while the daemon runs. Stages are one
// chain, swapped atomically: a request takes the chain once and finishes
// with it. A sink keeps its queue, subscribers, slots and (unless its
// resilience settings changed) its breaker; a reload swaps its generation
// (options, filter, events, timeout, policy), and the old generation is
// closed once the requests that took it have finished.

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/labelpipe/labelpipe/pipeline/resilience"
)

// refs counts the users of something a reload may retire, and runs its
// cleanup once it is retired and unused.
type refs struct {
	n       atomic.Int64
	retired atomic.Bool
	once    sync.Once
	cleanup func()
}

// hold takes a reference; false when r is retired (take the new one).
func (r *refs) hold() bool {
	r.n.Add(1)
	if r.retired.Load() {
		r.drop()
		return false
	}
	return true
}

func (r *refs) drop() {
	if r.n.Add(-1) == 0 && r.retired.Load() {
		r.once.Do(r.cleanup)
	}
}

// retire marks r retired; cleanup runs when its last user drops it.
func (r *refs) retire() {
	r.retired.Store(true)
	if r.n.Load() == 0 {
		r.once.Do(r.cleanup)
	}
}

// chain is the stage chain requests run, with the events some sink
// subscribes to.
type chain struct {
	stages []builtStage
	events map[string]bool
	refs   refs
}

// takeChain returns the current chain, held until c.refs.drop() (not a
// returned func: that would cost an allocation per request).
func (p *Pipeline) takeChain() *chain {
	for {
		c := p.chain.Load()
		if c.refs.hold() {
			return c
		}
	}
}

// sinkGen is what of a sink a reload may change.
type sinkGen struct {
	cfg    SinkConfig
	sink   Sink
	filter *JQ
	policy *resilience.Policy
	files  *fileLog // what its build read
	refs   refs
}

func newSinkGen(sc SinkConfig, s Sink) *sinkGen { return &sinkGen{cfg: sc, sink: s} }

// cur is the sink's current generation, for reading its policy or config.
func (s *builtSink) cur() *sinkGen { return s.gen.Load() }

// take returns the sink's current generation, held (not closed by a
// reload) until g.refs.drop().
func (s *builtSink) take() *sinkGen {
	for {
		g := s.gen.Load()
		if g.refs.hold() {
			return g
		}
	}
}

// RestartKeys are the config keys a reload cannot change; a change to one
// is reported as needing a restart and left as it was.
var RestartKeys = []string{"server", "admin", "broker", "redis", "tracing", "log", "jq", "custom_events"}

// ReloadResult says what a reload did.
type ReloadResult struct {
	// Stages says whether the stage chain was swapped.
	Stages bool
	// Changed names the sinks that now run a new config.
	Changed []string
	// Removed names the sinks a reload took out: they take no new
	// exports. On a durable broker (Redis) their handlers stop and their
	// queues wait there, pending, for the sink to come back; on one that
	// is not (memory), what their queues hold is still delivered.
	// Restored names removed sinks the config has again: they take new
	// exports, and their handlers start again where they stopped.
	Removed, Restored []string
	// Added names the sinks a reload started: they take the exports
	// fanned out after the reload.
	Added []string
	// NeedsRestart lists the changed keys that were left as they were.
	NeedsRestart []string
	// Took is how long the check and the swap took.
	Took time.Duration
}

// ReloadConfig checks next the way validate does (every value, then every
// stage and sink built offline) and, when it is valid, swaps the stages
// and the changed sinks' configs. When it is not, every error is logged
// and the running config stays. Keys that cannot change live are logged
// as needing a restart and keep their running values.
func (p *Pipeline) ReloadConfig(next *Config) (ReloadResult, error) {
	p.reloadMu.Lock()
	defer p.reloadMu.Unlock()
	start := time.Now()
	var res ReloadResult
	fail := func(err error) (ReloadResult, error) {
		p.refuse(next.file, err)
		return res, err
	}
	if err := Check(next, Options{Registry: p.opts.Registry}); err != nil {
		return fail(err)
	}
	old := p.cfg
	res.NeedsRestart = restartDiff(old, next)
	cur := p.chain.Load()

	// Sinks: which change, and how.
	type swap struct {
		s *builtSink
		g *sinkGen
	}
	var swaps []swap
	var built []*sinkGen // closed if the reload fails
	defer func() {
		for _, g := range built {
			if c, ok := g.sink.(Closer); ok {
				_ = c.Close()
			}
		}
	}()
	nextSinks := map[string]SinkConfig{}
	for _, sc := range next.Sinks {
		nextSinks[sc.Name] = sc
	}
	var remove, restore, add []*builtSink
	breakers, limiter := p.backends.breakerStore(), p.backends.rateLimiter()
	for _, sc := range next.Sinks {
		if _, ok := p.sinkNamed(sc.Name); ok {
			continue
		}
		if p.draining.Load() || p.router == nil || p.router.IsClosed() {
			res.NeedsRestart = append(res.NeedsRestart, fmt.Sprintf("sinks: %s added (shutting down)", sc.Name))
			continue
		}
		bs, err := p.buildSink(sc, breakers, limiter, func(bs *builtSink) { built = append(built, bs.cur()) })
		if err != nil {
			var be buildError
			if errors.As(err, &be) {
				err = fmt.Errorf("sink %q: %w", sc.Name, be.err)
			}
			return fail(err)
		}
		add = append(add, bs)
	}
	for _, s := range p.sinkList() {
		sc, ok := nextSinks[s.cfg.Name]
		if !ok {
			if !s.removed.Load() {
				remove = append(remove, s)
			}
			continue
		}
		g := s.cur()
		same := sinkSame(g.cfg, sc)
		if s.removed.Load() && (same || (sc.Type == s.cfg.Type && sc.MaxInFlight == s.cfg.MaxInFlight && sc.Queue == s.cfg.Queue)) {
			restore = append(restore, s)
		}
		if same {
			f := g.files.changed()
			if f == "" {
				continue
			}
			s.log.Info("config reload: a file the sink read changed; it is rebuilt", "file", f)
		}
		var keep []string
		if sc.Type != s.cfg.Type {
			keep = append(keep, "type")
		}
		if sc.MaxInFlight != s.cfg.MaxInFlight {
			keep = append(keep, "max_in_flight")
		}
		if sc.Queue != s.cfg.Queue {
			keep = append(keep, "queue")
		}
		if len(keep) > 0 {
			for _, k := range keep {
				res.NeedsRestart = append(res.NeedsRestart, fmt.Sprintf("sinks.%s.%s", sc.Name, k))
			}
			continue
		}
		t, _ := p.opts.Registry.Sink(sc.Type)
		env := p.env("sink", sc.Name)
		built1, err := t.Build(sc.Options, env)
		if err != nil {
			return fail(fmt.Errorf("sink %q: %w", sc.Name, err))
		}
		ng := newSinkGen(sc, built1)
		ng.files = env.files
		built = append(built, ng)
		if ng.filter, err = compileFilter(sc); err != nil {
			return fail(err)
		}
		ng.policy = g.policy // keeps the breaker's state
		if !reflect.DeepEqual(sc.Config, g.cfg.Config) {
			if ng.policy, err = p.newPolicy(s, sc, breakers, limiter); err != nil {
				return fail(err)
			}
		}
		swaps = append(swaps, swap{s, ng})
	}

	// Stages: a new chain when any stage changed. An unchanged stage is
	// carried over as it is built: a dedupe stage keeps what it has seen.
	var nc *chain
	var dropped []builtStage // the old chain's stages the new one does not keep
	var fresh []builtStage   // the new chain's stages built here
	if !stagesSame(cur.stages, next.Stages) {
		var stages []builtStage
		kept := map[int]bool{}
		for _, sc := range next.Stages {
			if i := slices.IndexFunc(cur.stages, func(s builtStage) bool { return stageSame(s, sc) }); i >= 0 && !kept[i] {
				kept[i] = true
				stages = append(stages, cur.stages[i])
				continue
			}
			t, _ := p.opts.Registry.Stage(sc.Type)
			e := p.env("stage", sc.Name)
			st, err := t.Build(sc.Options, e)
			if err != nil {
				closeStages(fresh)
				return fail(fmt.Errorf("stage %q: %w", sc.Name, err))
			}
			bs := builtStage{cfg: sc, stage: st, log: e.Logger, files: e.files}
			stages = append(stages, bs)
			fresh = append(fresh, bs)
		}
		for i, s := range cur.stages {
			if !kept[i] {
				dropped = append(dropped, s)
			}
		}
		nc = &chain{stages: stages}
	}
	if nc == nil && len(swaps) == 0 && len(remove) == 0 && len(restore) == 0 && len(add) == 0 {
		res.Took = time.Since(start)
		p.logRestart(res.NeedsRestart)
		p.log.Info("config reloaded; nothing changed that can change live", "took", res.Took.String())
		return res, nil
	}

	// Commit: added sinks and stopped sinks coming back first, since
	// starting their handlers can still fail; then the other sinks, so
	// that the chain's events match them.
	starting := slices.Clone(add)
	for _, s := range restore {
		if s.run.ctx.Err() != nil {
			starting = append(starting, s)
		}
	}
	if len(starting) > 0 {
		runs, err := p.startSinks(starting)
		if err != nil {
			closeStages(fresh)
			return fail(err)
		}
		for i, s := range starting {
			s.run = runs[i]
		}
	}
	if len(add) > 0 {
		set := p.sinkSet.Load()
		ns := &sinkSet{list: slices.Concat(set.list, add), byName: make(map[string]*builtSink, len(set.byName)+len(add))}
		for n, s := range set.byName {
			ns.byName[n] = s
		}
		for _, s := range add {
			ns.byName[s.cfg.Name] = s
			res.Added = append(res.Added, s.cfg.Name)
			s.log.Info("sink added by a reload: it takes the exports fanned out from now on", "type", s.cfg.Type,
				"events", s.cfg.Events, "max_in_flight", s.cfg.MaxInFlight)
		}
		// From here the fan-out queues requests for the new sinks.
		p.sinkSet.Store(ns)
	}
	built = nil
	for _, sw := range swaps {
		old := sw.s.gen.Swap(sw.g)
		old.refs.cleanup = func() { closeSink(old) }
		old.refs.retire()
		res.Changed = append(res.Changed, sw.s.cfg.Name)
		sw.s.log.Info("sink reloaded; requests under way finish with the previous config")
	}
	durable := p.broker.Info().Durable
	for _, s := range remove {
		s.removed.Store(true)
		res.Removed = append(res.Removed, s.cfg.Name)
		if !durable {
			s.log.Warn("sink removed by a reload: it takes no new exports; the broker does not keep queues across a restart, so what its queue holds is still delivered")
			continue
		}
		s.run.stop(s.log)
		s.log.Warn("sink removed by a reload: it takes no new exports and stops; what its queue holds stays on the broker until the sink is back in the config")
		go func(run *sinkRun) {
			<-run.stopped
			s.log.Info("removed sink stopped: its requests under way finished or were handed back; its queue is kept")
		}(s.run)
	}
	for _, s := range restore {
		s.removed.Store(false)
		res.Restored = append(res.Restored, s.cfg.Name)
		s.log.Info("sink back in the config: it takes new exports again, and delivers what its queue kept")
	}
	if nc == nil {
		nc = &chain{stages: cur.stages}
		cur.refs.cleanup = func() {} // the stages live on in nc
	} else {
		res.Stages = true
		cur.refs.cleanup = func() { closeStages(dropped) }
	}
	nc.events = map[string]bool{}
	for _, s := range p.sinkList() {
		if s.removed.Load() {
			continue
		}
		for _, ev := range s.cur().cfg.Events {
			nc.events[ev] = true
		}
	}
	p.chain.Store(nc)
	cur.refs.retire()
	res.Took = time.Since(start)
	p.logRestart(res.NeedsRestart)
	names := make([]string, len(nc.stages))
	for i, s := range nc.stages {
		names[i] = s.cfg.Name
	}
	p.log.Info("config reloaded", "stages_swapped", res.Stages, "stages", names, "sinks_changed", res.Changed,
		"sinks_added", res.Added, "sinks_removed", res.Removed, "sinks_restored", res.Restored, "took", res.Took.String())
	return res, nil
}

// startSinks subscribes the sinks' workers to their queues (on Redis
// this creates the consumer groups of added sinks, reading from the
// stream's start, as at start) and runs their handlers on the running
// router; before Run, the router starts them with the others. A sink
// coming back after a stop starts once its previous run has stopped.
// On an error, every handler it added is stopped and nothing is left
// running.
func (p *Pipeline) startSinks(sinks []*builtSink) ([]*sinkRun, error) {
	p.reloads++
	var runs []*sinkRun
	fail := func(err error) ([]*sinkRun, error) {
		p.abort(runs)
		return nil, err
	}
	for _, s := range sinks {
		if s.run != nil {
			<-s.run.stopped // its consumers' names are taken until then
		}
		run, err := p.addSinkHandlers(s, fmt.Sprintf("sink-%s-reload%d", s.cfg.Name, p.reloads))
		if err != nil {
			return fail(fmt.Errorf("sink %q: %w", s.cfg.Name, err))
		}
		runs = append(runs, run)
	}
	if !p.ran.Load() {
		return runs, nil
	}
	select {
	case <-p.router.Running():
	case <-p.addedCtx.Done():
		return fail(errors.New("the router stopped"))
	}
	if err := p.router.RunHandlers(p.addedCtx); err != nil {
		return fail(fmt.Errorf("start the sinks' handlers: %w", err))
	}
	return runs, nil
}

// abort stops the runs of a start that failed, and waits for them. The
// handlers the router had not started yet are started now: they
// subscribe to nothing (runSub) and leave the router at once, rather
// than waiting to be started by a later reload.
func (p *Pipeline) abort(runs []*sinkRun) {
	for _, r := range runs {
		r.stop(p.log)
	}
	if p.ran.Load() && p.router.IsRunning() && p.addedCtx.Err() == nil {
		if err := p.router.RunHandlers(p.addedCtx); err != nil {
			p.log.Warn("config reload: could not clear the handlers of sinks that failed to start", "err", err)
		}
	}
	for _, r := range runs {
		<-r.stopped
	}
}

// ReloadFile loads path (with opts, as LoadConfig takes them) and reloads
// it: see ReloadConfig. A file that does not load is refused the same way.
func (p *Pipeline) ReloadFile(path string, opts ...LoadOption) (ReloadResult, error) {
	opts = append([]LoadOption{ResolveWith(p.opts.Registry)}, opts...)
	next, err := LoadConfig(path, opts...)
	if err != nil {
		p.refuse(path, err)
		return ReloadResult{}, err
	}
	return p.ReloadConfig(next)
}

// refuse logs every error of a refused config.
func (p *Pipeline) refuse(file string, err error) {
	var ce ConfigErrors
	if errors.As(err, &ce) {
		for _, e := range ce {
			p.log.Error("config reload: invalid config", "err", e.Error())
		}
	} else {
		p.log.Error("config reload: invalid config", "err", err)
	}
	p.log.Error("config reload refused; the running config stays", "file", file, "errors", max(len(ce), 1))
}

func (p *Pipeline) logRestart(keys []string) {
	for _, k := range keys {
		p.log.Warn("config reload: change needs a restart; left as it was", "key", k)
	}
}

func closeStages(stages []builtStage) {
	for _, s := range stages {
		if c, ok := s.stage.(Closer); ok {
			if err := c.Close(); err != nil {
				s.log.Warn("close the previous stage", "err", err)
			}
		}
	}
}

func closeSink(g *sinkGen) {
	if c, ok := g.sink.(Closer); ok {
		_ = c.Close()
	}
}

// restartDiff lists the top-level keys that differ and cannot change live.
func restartDiff(old, next *Config) []string {
	var out []string
	add := func(key string, a, b any) {
		if !reflect.DeepEqual(a, b) {
			out = append(out, key)
		}
	}
	// The admin token is re-read by Reload; compare the rest of admin.
	oa, na := old.Admin, next.Admin
	oa.Token, na.Token, oa.fileToken, na.fileToken = "", "", "", ""
	add("server", old.Server, next.Server)
	add("admin", oa, na)
	add("broker", old.Broker, next.Broker)
	add("redis", old.Redis, next.Redis)
	add("tracing", old.Tracing, next.Tracing)
	add("log", old.Log, next.Log)
	add("jq", old.JQ, next.JQ)
	add("custom_events", old.CustomEvents, next.CustomEvents)
	return out
}

// sinkSame reports whether two sink configs are the same, ignoring where
// they were written in the file.
func sinkSame(a, b SinkConfig) bool {
	a.node, b.node, a.path, b.path = nil, nil, "", ""
	return reflect.DeepEqual(a, b)
}

func stagesSame(cur []builtStage, next []StageConfig) bool {
	return slices.EqualFunc(cur, next, stageSame)
}

// stageSame reports whether s is built from n: the same config, and the
// files its build read unchanged.
func stageSame(s builtStage, n StageConfig) bool {
	return s.cfg.Name == n.Name && s.cfg.Type == n.Type && reflect.DeepEqual(s.cfg.Options, n.Options) && s.files.changed() == ""
}
