package pipeline

import (
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/sony/gobreaker/v2"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/labelpipe/labelpipe/pipeline/backend"
	"github.com/labelpipe/labelpipe/pipeline/resilience"
)

// Options are what an embedder injects. Everything is optional but the
// registry.
type Options struct {
	// Registry holds the stage, sink and backend types; builtin.Registry()
	// has the built-in ones. Required.
	Registry *Registry
	// Logger receives every log line; nil discards them.
	Logger *slog.Logger
	// TracerProvider and MeterProvider default to no-ops.
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
	// Metrics, when set, is served at /metrics on the admin listener.
	Metrics http.Handler
	// Profiles, when set, is served at /debug/pprof/ on the admin listener
	// if admin.pprof is true (the daemon passes telemetry.Profiles()). The
	// core does not import net/http/pprof itself, so that a plugin does not
	// pull it in.
	Profiles http.Handler
	// Listeners, keyed "webhook" or "admin", are used instead of opening
	// server.addr or admin.addr: for socket activation, or for tests that
	// need the address before the daemon runs.
	Listeners map[string]net.Listener
	// ReplicaID names this process among replicas; default host-pid.
	ReplicaID string
	// Version is reported by /healthz and on spans.
	Version string
}

// Pipeline is one assembled labelpipe: stages, backends, router and sinks.
type Pipeline struct {
	cfg     *Config
	log     *slog.Logger
	tracer  trace.Tracer
	prop    propagation.TextMapPropagator
	metrics *instruments
	opts    Options

	// stages is the build's stage list; requests use chain, which a
	// reload swaps.
	stages []builtStage
	chain  atomic.Pointer[chain]
	// sinkSet is every sink, swapped whole by a reload that adds one:
	// read it with sinkList and sinkNamed.
	sinkSet atomic.Pointer[sinkSet]
	// addedCtx is what the handlers of sinks a reload adds run under. It
	// is cancelled when the router starts closing, as Router.Run does
	// for the handlers it starts: a handler's subscription ends only
	// with its context, and Router.Close waits for that.
	addedCtx    context.Context
	addedCancel context.CancelFunc
	// reloads counts the reloads that added sinks: their handlers' names
	// carry it, so that a reload that failed midway never reuses a name
	// (the router panics on a duplicate).
	reloads  int
	events   map[string]bool
	reloadMu sync.Mutex // one reload at a time
	backends openBackends
	broker   backend.Broker
	system   string // the broker's messaging.system, for spans
	dlq      backend.DLQ
	ledger   backend.Ledger
	history  backend.History // nil: history off
	router   *message.Router
	// offline: built for a preview; touches nothing outside the process.
	offline bool
	// fanoutSlots bounds the exports fanned out at once.
	fanoutSlots chan struct{}
	// bodies bounds the bytes of bodies read and checked at once.
	bodies  *bodyBudget
	clients clients
	tls     struct{ server, admin *tlsFiles }
	// adminSum is the admin token's SHA-256 (nil: no token); Reload swaps it.
	adminSum *atomic.Pointer[[sha256.Size]byte]
	// pauses says which sinks an operator paused; sessions are the
	// console's signed-in browsers; replays the replay jobs under way.
	pauses   *pauses
	sessions *sessions
	replays  *replayJobs

	draining  atomic.Bool
	runCancel context.CancelFunc
	ran       atomic.Bool // Run started the router
	hardStop  context.Context
	hardStopF context.CancelFunc
	jqCtx     context.Context // hardStop with the config's jq limits: the root of every handler
	closeOnce sync.Once
	closeErr  error
	// shutdown counts what happened to requests while draining.
	shutdown struct {
		delivered  atomic.Int64
		mu         sync.Mutex
		handedBack []string // idempotency keys of deliveries interrupted and nacked
	}
	servers []*http.Server
}

type builtStage struct {
	cfg   StageConfig
	stage Stage
	log   *slog.Logger
	files *fileLog // what its build read
}

type builtSink struct {
	cfg SinkConfig
	// slots bounds the requests under way at once (max_in_flight), whatever
	// the broker's subscribers do.
	slots chan struct{}
	// gen is what a reload may change: the sink's options, filter,
	// events, timeout and resilience policy.
	gen atomic.Pointer[sinkGen]
	// removed: a reload took the sink out of the config. The fan-out
	// queues nothing more for it. On a durable broker its handlers are
	// stopped (run) and its queue waits there; on another, what its
	// queue holds is still delivered.
	removed atomic.Bool
	// run is the sink's handlers now on the router; a reload replaces it
	// when a removed sink comes back. Written under reloadMu.
	run     *sinkRun
	log     *slog.Logger
	topic   string    // sink.<name>
	backlog backlog   // keeps the sink's queue within queue:
	stats   sinkStats // recent deliveries and the last error, for the console
}

// New builds a pipeline from a loaded config. On failure it closes
// whatever it had built.
func New(cfg *Config, opts Options) (p *Pipeline, err error) {
	return newPipeline(cfg, opts, false)
}

func newPipeline(cfg *Config, opts Options, offline bool) (p *Pipeline, err error) {
	if opts.Registry == nil {
		return nil, errors.New("pipeline: Options.Registry is required (use builtin.Registry())")
	}
	if err := cfg.Resolve(opts.Registry); err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	opts.Logger = slog.New(traceLogHandler{opts.Logger.Handler()})
	if opts.TracerProvider == nil {
		opts.TracerProvider = tracenoop.NewTracerProvider()
	}
	if opts.MeterProvider == nil {
		opts.MeterProvider = metricnoop.NewMeterProvider()
	}
	if opts.ReplicaID == "" {
		host, _ := os.Hostname()
		opts.ReplicaID = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	p = &Pipeline{
		cfg:     cfg,
		log:     opts.Logger,
		tracer:  opts.TracerProvider.Tracer("github.com/labelpipe/labelpipe/pipeline"),
		prop:    Propagator(),
		opts:    opts,
		events:  map[string]bool{},
		offline: offline,
	}
	p.sinkSet.Store(&sinkSet{byName: map[string]*builtSink{}})
	p.bodies = newBodyBudget(cfg.Server)
	for _, t := range cfg.Server.TrustedProxies {
		pf, err := parsePrefix(t)
		if err != nil {
			return nil, fmt.Errorf("server.trusted_proxies: %w", err)
		}
		p.clients.trusted = append(p.clients.trusted, pf)
	}
	p.adminSum = adminToken(&cfg.Admin)
	p.sessions = newSessions()
	p.replays = &replayJobs{byID: map[string]*replayJob{}}
	if p.tls.server, err = newTLSFiles("server", cfg.Server.TLS, cfg.dir); err != nil {
		return nil, err
	}
	if p.tls.admin, err = newTLSFiles("admin", cfg.Admin.TLS, cfg.dir); err != nil {
		return nil, err
	}
	p.hardStop, p.hardStopF = context.WithCancel(context.Background())
	p.jqCtx = WithJQLimits(p.hardStop, cfg.JQ)
	// built, not p: `return nil, err` has already set p to nil when this runs.
	built := p
	defer func() {
		if err != nil {
			_ = built.Close()
			p = nil
		}
	}()
	if err = p.openBackends(); err != nil {
		return nil, err
	}
	// Every stage's and sink's build errors, all at once.
	stageErr, sinkErr := p.buildStages(), p.buildSinks()
	var ce, se ConfigErrors
	if errors.As(stageErr, &ce) && errors.As(sinkErr, &se) {
		return nil, append(ce, se...)
	}
	if err = cmp.Or(stageErr, sinkErr); err != nil {
		return nil, err
	}
	if p.metrics, err = newInstruments(opts.MeterProvider, p.sinkList, p.bodies, p.dlqLen, p.sinkQueue); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	if err = p.buildRouter(); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *Pipeline) env(kind, name string) Env {
	return Env{
		Name:           name,
		Logger:         p.log.With(kind, name),
		TracerProvider: p.opts.TracerProvider,
		MeterProvider:  p.opts.MeterProvider,
		DedupeStore:    p.dedupeStore,
		ConfigDir:      p.cfg.dir,
		Offline:        p.offline,
		files:          &fileLog{},
	}
}

// buildStages builds every stage; it reports every stage that fails to
// build, not only the first.
func (p *Pipeline) buildStages() error {
	var errs ConfigErrors
	for _, sc := range p.cfg.Stages {
		t, _ := p.opts.Registry.Stage(sc.Type)
		env := p.env("stage", sc.Name)
		s, err := t.Build(sc.Options, env)
		if err != nil {
			var ce ConfigErrors
			errors.As(p.cfg.entryError(sc.path, sc.label(), err), &ce)
			errs = append(errs, ce...)
			continue
		}
		p.stages = append(p.stages, builtStage{cfg: sc, stage: s, log: env.Logger, files: env.files})
	}
	if len(errs) > 0 {
		return errs
	}
	return nil
}

// buildSinks builds every sink; it reports every sink that fails to
// build, not only the first.
func (p *Pipeline) buildSinks() error {
	breakers := p.backends.breakerStore()
	p.pauses = newPauses(p.backends.pauseStore(), p.log.With("component", "pauses"))
	p.sessions.store, p.sessions.log = p.backends.sessionStore(), p.log.With("component", "console")
	limiter := p.backends.rateLimiter()
	var errs ConfigErrors
	set := p.sinkSet.Load() // nothing reads it yet: filled in place
	for _, sc := range p.cfg.Sinks {
		bs, err := p.buildSink(sc, breakers, limiter, func(bs *builtSink) {
			set.list = append(set.list, bs) // appended first so Close closes it
		})
		if err != nil {
			var be buildError
			if !errors.As(err, &be) {
				return err
			}
			var ce ConfigErrors
			errors.As(p.cfg.entryError(sc.path, sc.label(), be.err), &ce)
			errs = append(errs, ce...)
			continue
		}
		set.byName[sc.Name] = bs
		for _, ev := range sc.Events {
			p.events[ev] = true
		}
	}
	if len(errs) > 0 {
		return errs
	}
	p.chain.Store(&chain{stages: p.stages, events: p.events})
	return nil
}

// buildError is a sink type's Build failing, as opposed to its filter or
// policy.
type buildError struct{ err error }

func (e buildError) Error() string { return e.err.Error() }

// buildSink builds one sink: its Sink, filter and resilience policy.
// built is called once the Sink exists, before anything else can fail,
// so that the caller can close it.
func (p *Pipeline) buildSink(sc SinkConfig, breakers gobreaker.SharedDataStore, limiter resilience.SharedLimiter, built func(*builtSink)) (*builtSink, error) {
	t, _ := p.opts.Registry.Sink(sc.Type)
	env := p.env("sink", sc.Name)
	s, err := t.Build(sc.Options, env)
	if err != nil {
		return nil, buildError{err}
	}
	bs := &builtSink{cfg: sc, log: env.Logger,
		slots: make(chan struct{}, sc.MaxInFlight), topic: backend.TopicSink(sc.Name)}
	g := newSinkGen(sc, s)
	g.files = env.files
	bs.gen.Store(g)
	built(bs)
	if g.filter, err = compileFilter(sc); err != nil {
		return nil, err
	}
	if sc.RateLimit.Shared && limiter == nil {
		env.Logger.Warn("rate_limit.shared: no backend shares rate limits (use broker.type redis); this replica keeps its own")
	}
	if g.policy, err = p.newPolicy(bs, sc, breakers, limiter); err != nil {
		return nil, err
	}
	return bs, nil
}

// sinkSet is the pipeline's sinks at one time; a reload that adds a sink
// stores a new one.
type sinkSet struct {
	list   []*builtSink
	byName map[string]*builtSink
}

// sinkList is every sink, in config order (added ones last); read only.
func (p *Pipeline) sinkList() []*builtSink { return p.sinkSet.Load().list }

// sinkNamed is the sink called name.
func (p *Pipeline) sinkNamed(name string) (*builtSink, bool) {
	s, ok := p.sinkSet.Load().byName[name]
	return s, ok
}

func compileFilter(sc SinkConfig) (*JQ, error) {
	if sc.Filter == "" {
		return nil, nil
	}
	f, err := CompileJQ(sc.Filter)
	if err != nil {
		return nil, fmt.Errorf("sink %q: filter: %w", sc.Name, err)
	}
	return f, nil
}

// newPolicy builds sc's resilience policy (rate limit, breaker, retries)
// for bs.
func (p *Pipeline) newPolicy(bs *builtSink, sc SinkConfig, breakers gobreaker.SharedDataStore, limiter resilience.SharedLimiter) (*resilience.Policy, error) {
	log := bs.log
	pol, err := resilience.New(sc.Config, resilience.Options{
		Name:    sc.Name,
		Logger:  log,
		Store:   breakers,
		Limiter: limiter,
		Gate:    p.pauseGate(bs),
		OnStateChange: func(from, to gobreaker.State) {
			log.Warn("circuit breaker changed state", "from", from.String(), "to", to.String())
		},
	})
	if err != nil {
		return nil, fmt.Errorf("sink %q: %w", sc.Name, err)
	}
	return pol, nil
}

// handBackGrace is how long deliveries cancelled at the drain deadline
// have to hand their requests back.
const handBackGrace = time.Second

func (p *Pipeline) buildRouter() error {
	// Deliveries still running at the drain deadline are cancelled then,
	// and need a moment to nack their requests and record them as handed
	// back; without the grace the router could stop waiting first and the
	// drain report would miss them.
	r, err := message.NewRouter(message.RouterConfig{CloseTimeout: p.cfg.Server.ShutdownTimeout + handBackGrace},
		newWatermillLogger(p.log.With("component", "router")))
	if err != nil {
		return fmt.Errorf("router: %w", err)
	}
	r.AddMiddleware(middleware.Recoverer)
	p.router = r
	subs, err := p.broker.Workers(backend.TopicExports, backend.FanoutGroup, p.cfg.Broker.FanoutWorkers)
	if err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	p.fanoutSlots = make(chan struct{}, p.cfg.Broker.FanoutWorkers)
	for i, sub := range subs {
		r.AddConsumerHandler(fmt.Sprintf("fanout-%d", i), backend.TopicExports, sub, p.fanout)
	}
	for _, s := range p.sinkList() {
		if s.run, err = p.addSinkHandlers(s, "sink-"+s.cfg.Name); err != nil {
			return err
		}
	}
	return nil
}

// addSinkHandlers subscribes s's workers to its queue and adds their
// handlers to the router (a running router starts them on RunHandlers).
// Handlers are named prefix-<i>; names must be unique in the router. The
// run it returns stops them; on an error, what was added is stopped.
func (p *Pipeline) addSinkHandlers(s *builtSink, prefix string) (*sinkRun, error) {
	subs, err := p.broker.Workers(s.topic, backend.SinkGroup(s.cfg.Name), s.cfg.MaxInFlight)
	if err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	run := &sinkRun{subs: subs, stopped: make(chan struct{})}
	run.ctx, run.cancel = context.WithCancel(context.Background())
	for i, sub := range subs {
		p.router.AddConsumerHandler(fmt.Sprintf("%s-%d", prefix, i), s.topic, runSub{sub, run}, p.deliverHandler(s, run))
	}
	return run, nil
}

// sinkRun is one start of a sink's handlers: those a build or a reload
// added. Stopping it ends their subscriptions and, in their deliveries,
// retries and waits; an attempt under way finishes (see deliverHandler).
type sinkRun struct {
	subs    []message.Subscriber
	ctx     context.Context // done once stopping
	cancel  context.CancelFunc
	stopped chan struct{} // closed once every subscriber is closed
	once    sync.Once
}

// stop ends the run's subscriptions and closes its subscribers, which on
// Redis drops their heartbeats, so that what they hold pending is
// redelivered (to this replica when the sink comes back, or to another
// that has it). What is pending stays pending: nothing is acked or
// dead-lettered by stopping. It returns at once; stopped says when done.
func (r *sinkRun) stop(log *slog.Logger) {
	r.once.Do(func() {
		r.cancel()
		go func() {
			defer close(r.stopped)
			for _, sub := range r.subs {
				if err := sub.Close(); err != nil {
					log.Warn("close a stopped sink's subscriber", "err", err)
				}
			}
		}()
	})
}

// runSub is a sink worker whose subscription ends with its run. The
// router cannot take back a handler it has not started: one whose run
// stopped first subscribes to nothing when the router starts it, and
// ends at once.
type runSub struct {
	message.Subscriber
	run *sinkRun
}

func (r runSub) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	if r.run.ctx.Err() != nil {
		ch := make(chan *message.Message)
		close(ch)
		return ch, nil
	}
	ctx, cancel := context.WithCancel(ctx)
	context.AfterFunc(r.run.ctx, cancel)
	msgs, err := r.Subscriber.Subscribe(ctx, topic)
	if err != nil {
		cancel()
		return nil, err
	}
	return msgs, nil
}

// Handler is the webhook endpoint, for embedders that mount it in their own
// server. It is usable once Run has started the router.
func (p *Pipeline) Handler() http.Handler { return p.webhookHandler() }

// Run starts the router and, when configured, the webhook and admin
// listeners, and blocks until ctx is done. It then drains: it stops
// accepting (503), finishes in-flight requests and deliveries within
// server.shutdown_timeout, and returns.
func (p *Pipeline) Run(ctx context.Context) error {
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	p.runCancel = cancel
	routerDone := make(chan error, 1)
	p.reloadMu.Lock() // a reload adding a sink reads addedCtx once ran is set
	p.addedCtx, p.addedCancel = context.WithCancel(runCtx)
	p.ran.Store(true)
	p.reloadMu.Unlock()
	go func() { routerDone <- p.router.Run(runCtx) }()
	select {
	case <-p.router.Running():
	case err := <-routerDone:
		return fmt.Errorf("router: %w", err)
	}
	var listenErr = make(chan error, 2)
	if addr := p.cfg.Server.Addr; addr != "" || p.opts.Listeners["webhook"] != nil {
		mux := http.NewServeMux()
		mux.Handle(p.cfg.Server.Path, p.Handler())
		if err := p.serve(addr, mux, "webhook", p.tls.server, listenErr); err != nil {
			return err
		}
	}
	if addr := p.cfg.Admin.Addr; addr != "" || p.opts.Listeners["admin"] != nil {
		if err := p.serve(addr, p.AdminHandler(), "admin", p.tls.admin, listenErr); err != nil {
			return err
		}
	}
	p.logStart()
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-listenErr:
	case err := <-routerDone:
		runErr = fmt.Errorf("router stopped: %w", err)
	}
	p.drain()
	return runErr
}

func (p *Pipeline) serve(addr string, h http.Handler, what string, files *tlsFiles, errs chan<- error) error {
	ln, err := p.listen(what, addr, files)
	if err != nil {
		return err
	}
	srv := p.httpServer(h)
	p.servers = append(p.servers, srv)
	p.log.Info("listening", "listener", what, "addr", ln.Addr().String(), "tls", files != nil)
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errs <- fmt.Errorf("%s listener: %w", what, err)
		}
	}()
	return nil
}

func (p *Pipeline) logStart() {
	info := p.broker.Info()
	if info.Warning != "" {
		p.log.Warn(info.Warning)
	}
	if p.cfg.Admin.Pprof && p.opts.Profiles == nil {
		p.log.Warn("admin.pprof is true but no profile handler was given (Options.Profiles); /debug/pprof/ is not served")
	}
	for i, s := range p.stages {
		p.log.Info("stage ready", "stage", s.cfg.Name, "type", s.cfg.Type, "order", i+1)
	}
	for _, s := range p.sinkList() {
		p.log.Info("sink ready", "sink", s.cfg.Name, "type", s.cfg.Type, "events", s.cfg.Events,
			"max_in_flight", s.cfg.MaxInFlight, "max_attempts", s.cfg.Retry.MaxAttempts)
	}
	p.log.Info("labelpipe running", "broker", p.cfg.Broker.Type, "durable", info.Durable, "replica", p.opts.ReplicaID)
}

// drain stops intake, lets in-flight work finish within the shutdown
// timeout, and stops the router.
func (p *Pipeline) drain() {
	deadline := time.Now().Add(p.cfg.Server.ShutdownTimeout)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	p.draining.Store(true)
	p.log.Info("draining", "timeout", p.cfg.Server.ShutdownTimeout.String())
	for _, s := range p.servers {
		_ = s.Shutdown(ctx)
	}
	// A broker that keeps its queue in process waits for it to empty; a
	// durable one keeps it for the next start. Waiting is cut short when
	// every request left waits behind an open circuit breaker: nothing
	// more can be delivered before the deadline.
	waitCtx, cutShort := context.WithCancel(ctx)
	go p.cutShortWhenStuck(waitCtx, cutShort)
	_ = p.broker.Drain(waitCtx)
	if waitCtx.Err() != nil && ctx.Err() == nil {
		p.log.Warn("every undelivered request waits behind an open circuit breaker; not waiting for the drain deadline")
		p.hardStopF()
	}
	cutShort()
	// Deliveries still running at the deadline are cancelled; they are
	// nacked, not dead-lettered, so a durable broker redelivers them.
	stop := time.AfterFunc(time.Until(deadline), p.hardStopF)
	defer stop.Stop()
	p.stopAdded()
	if err := p.router.Close(); err != nil {
		p.log.Warn("router did not stop cleanly", "err", err)
	}
	done, cancelDone := context.WithCancel(context.Background())
	cancelDone()
	lost := p.broker.Drain(done) // what the broker holds now and will not keep
	p.runCancel()
	p.shutdown.mu.Lock()
	// A nacked request may be handed to a handler again while the router
	// stops, and be interrupted again: count each once.
	handedBack := slices.Compact(slices.Sorted(slices.Values(p.shutdown.handedBack)))
	p.shutdown.mu.Unlock()
	if lost != nil {
		p.log.Error("requests undelivered at shutdown", "err", lost)
	}
	p.log.Info("drained", "delivered_while_draining", p.shutdown.delivered.Load(),
		"handed_back", len(handedBack), "handed_back_ids", handedBack, "lost", lost != nil)
}

// cutShortWhenStuck cancels the drain's wait once nothing left can be
// delivered: no export waits for the fan-out, and every sink with
// requests left has an open breaker.
func (p *Pipeline) cutShortWhenStuck(ctx context.Context, cancel context.CancelFunc) {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if p.stuck(ctx) {
			cancel()
			return
		}
	}
}

func (p *Pipeline) stuck(ctx context.Context) bool {
	if st, err := p.broker.QueueStats(ctx, backend.TopicExports, backend.FanoutGroup); err != nil || st.Depth > 0 {
		return false
	}
	waiting := false
	for _, s := range p.sinkList() {
		if p.sinkQueue(ctx, s).Depth == 0 {
			continue
		}
		if s.cur().policy.State() != gobreaker.StateOpen {
			return false
		}
		waiting = true
	}
	return waiting
}

// stopAdded ends the subscriptions of the sinks a reload added, as the
// router is about to close.
func (p *Pipeline) stopAdded() {
	p.reloadMu.Lock()
	defer p.reloadMu.Unlock()
	if p.addedCancel != nil {
		p.addedCancel()
	}
}

// Close releases everything New built. It is safe twice and without Run.
func (p *Pipeline) Close() error {
	p.closeOnce.Do(func() {
		var errs []error
		if p.hardStopF != nil {
			p.hardStopF()
		}
		// A router that never ran has no handlers to stop, and its Close
		// would wait the whole close timeout for them.
		if p.router != nil && p.ran.Load() && !p.router.IsClosed() {
			p.stopAdded()
			errs = append(errs, p.router.Close())
		}
		stages := p.stages
		if c := p.chain.Load(); c != nil {
			stages = c.stages
		}
		for _, s := range stages {
			if c, ok := s.stage.(Closer); ok {
				errs = append(errs, c.Close())
			}
		}
		for _, s := range p.sinkList() {
			if g := s.gen.Load(); g != nil {
				if c, ok := g.sink.(Closer); ok {
					errs = append(errs, c.Close())
				}
			}
		}
		errs = append(errs, p.backends.close())
		p.closeErr = errors.Join(errs...)
	})
	return p.closeErr
}

// Ready reports whether the pipeline can accept exports now.
func (p *Pipeline) Ready(ctx context.Context) error {
	if p.draining.Load() {
		return errors.New("shutting down")
	}
	if p.router == nil || !p.router.IsRunning() {
		return errors.New("router not running")
	}
	if err := p.broker.Ready(ctx); err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	return nil
}
