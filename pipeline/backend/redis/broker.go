package redis

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"
	"github.com/ThreeDotsLabs/watermill/message"
	goredis "github.com/redis/go-redis/v9"

	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/pipeline/backend"
)

// The redis broker is watermill-redisstream on Redis streams: one stream
// per topic (cfg.Prefix + topic), one consumer group per handler, and one
// consumer per worker named <replicaID>-<group>-<i>.
//
// Claiming. A message stays pending (in the group's PEL) from delivery to
// ack. Another consumer claims it once it has been idle for claim_idle AND
// its owner is gone. "Gone" is a heartbeat: every subscribed consumer keeps
// a key <prefix>alive:<topic>:<group>:<consumer> alive (PX claim_idle,
// refreshed every claim_idle/3). A live replica holding a message longer
// than claim_idle (breaker open, long retry backoff) therefore keeps it,
// and a SIGKILLed one loses its messages to the living within about
// claim_idle. A consumer that finds pending entries under its own name at
// start (a restarted replica reusing its name) hands them to
// <name>-orphan, which has no heartbeat, so they are claimed at once.
//
// Lost replies. XREADGROUP and XCLAIM change the PEL in Redis before the
// reply reaches us. When the connection breaks in between (Redis killed
// after its AOF fsync, or go-redis retrying the read on a new connection),
// the entry is pending under this live consumer, which never got it, and
// its heartbeat keeps everyone else off. So each worker remembers the
// entries it did receive and has not acked yet, and also claims an entry
// of its own that is idle for claim_idle and not among them. Held entries
// are never claimed back, so only a lost reply costs a redelivery.
//
// Trimming. Redis 7 cannot trim "acknowledged entries only", and plain
// XADD MAXLEN would drop messages nobody has read. So publish never trims;
// every max(1, min(100, max_len/10)) publishes per stream one Lua script
// (atomic, single key, cluster-safe) computes the safe cut
//
//	cut = min over the stream's groups of
//	        the group's oldest pending id   if it has pending entries
//	        the group's last-delivered id   otherwise
//
// and runs XTRIM MINID ~ cut LIMIT (len - max_len). Every entry below cut
// has been delivered to and acknowledged by every group, MINID keeps every
// id >= cut, and LIMIT keeps about max_len entries. A stream without any
// group is never trimmed, because its first group starts at id 0. So the
// stream holds roughly max_len entries plus whatever is unacknowledged.

// Subscriber tuning; shutdown waits at most one block.
const (
	redisBlockTime     = time.Second
	redisNackResend    = 250 * time.Millisecond
	redisSubscribeWait = time.Second // cap of the retry backoff when Redis is down at subscribe
	redisOpTimeout     = 2 * time.Second
)

// Broker is the durable broker on Redis streams; see the comment above.
type Broker struct {
	client    goredis.UniversalClient // shared: used, never closed here
	cfg       pipeline.BrokerConfig
	replica   string
	logger    watermill.LoggerAdapter
	trimEvery int64
	trimmed   sync.Map // stream -> *atomic.Int64 publish counter
	pubClosed atomic.Bool

	mu      sync.Mutex
	closed  bool
	subs    []*worker
	readers []goredis.UniversalClient // per-Workers clients this broker owns
	alive   map[string]struct{}       // heartbeat keys of subscribed consumers
	stop    chan struct{}
	done    chan struct{}
}

// NewBroker builds the durable broker on client. replicaID must differ
// between processes sharing the Redis (host-pid is fine).
func NewBroker(client goredis.UniversalClient, cfg pipeline.BrokerConfig, replicaID string, logger watermill.LoggerAdapter) (*Broker, error) {
	if client == nil {
		return nil, errors.New("redis broker: no redis client")
	}
	if replicaID == "" {
		return nil, errors.New("redis broker: empty replica id")
	}
	if cfg.ClaimIdle <= 0 {
		cfg.ClaimIdle = 60 * time.Second
	}
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	logger = newQuietLogger(logger, 10*time.Second)
	b := &Broker{
		client:  client,
		cfg:     cfg,
		replica: replicaID,
		logger:  logger,
		alive:   map[string]struct{}{},
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	if cfg.MaxLen > 0 {
		b.trimEvery = max(1, min(100, cfg.MaxLen/10))
	}
	go b.heartbeat()
	return b, nil
}

// published trims stream when its maxlen asks for it, every trimEvery
// publishes.
func (b *Broker) published(stream string, n int) {
	if b.trimEvery > 0 {
		b.maybeTrim(stream, int64(n))
	}
}

func (b *Broker) maybeTrim(stream string, n int64) {
	c, ok := b.trimmed.Load(stream)
	if !ok { // the first publish to stream only: LoadOrStore's argument escapes every time
		c, _ = b.trimmed.LoadOrStore(stream, new(atomic.Int64))
	}
	cnt := c.(*atomic.Int64)
	after := cnt.Add(n)
	if after/b.trimEvery == (after-n)/b.trimEvery {
		return
	}
	ctx, cancel := context.WithTimeout(quiet(context.Background()), redisOpTimeout)
	defer cancel()
	// A failed trim only delays trimming; the publish itself succeeded.
	if err := trimScript.Run(ctx, b.client, []string{stream}, b.cfg.MaxLen).Err(); err != nil {
		b.logger.Error("stream trim failed", err, watermill.LogFields{"stream": stream})
	}
}

// trimScript trims KEYS[1] towards ARGV[1] entries without dropping any
// entry some group has not acknowledged (see the rule at the top).
var trimScript = goredis.NewScript(`
local n = redis.call('XLEN', KEYS[1])
local maxlen = tonumber(ARGV[1])
if n <= maxlen then return 0 end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then return 0 end
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function less(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end
local cut = nil
for _, g in ipairs(groups) do
  local name, pending, last
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i+1]
    elseif g[i] == 'pending' then pending = g[i+1]
    elseif g[i] == 'last-delivered-id' then last = g[i+1] end
  end
  local safe = last
  if pending > 0 then safe = redis.call('XPENDING', KEYS[1], name)[2] end
  if cut == nil or less(safe, cut) then cut = safe end
end
return redis.call('XTRIM', KEYS[1], 'MINID', '~', cut, 'LIMIT', n - maxlen)
`)

// Workers returns n subscribers in consumer group group. Their blocking
// reads run on a client of their own, so n idle workers never hold the
// connections the ingress needs to publish.
func (b *Broker) Workers(topic, group string, n int) ([]message.Subscriber, error) {
	if n < 1 {
		return nil, fmt.Errorf("redis broker: %s: workers must be ≥ 1, got %d", topic, n)
	}
	if group == "" {
		return nil, fmt.Errorf("redis broker: %s: empty consumer group", topic)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, errors.New("redis broker: closed")
	}
	reader, owned := readerClient(b.client, 2*n+2)
	var users *atomic.Int32 // the workers still using reader, when owned
	if owned {
		b.readers = append(b.readers, reader)
		users = new(atomic.Int32)
		users.Store(int32(n))
	}
	stream := b.cfg.Prefix + topic
	subs := make([]message.Subscriber, n)
	for i := range subs {
		w := &worker{
			b:        b,
			client:   reader,
			stream:   stream,
			group:    group,
			consumer: fmt.Sprintf("%s-%s-%d", b.replica, group, i),
			closing:  make(chan struct{}),
			users:    users,
		}
		claimInterval := min(max(b.cfg.ClaimIdle/4, 50*time.Millisecond), 5*time.Second)
		sub, err := redisstream.NewSubscriber(redisstream.SubscriberConfig{
			Client:                        heldClient{noCloseClient{reader}, w},
			Consumer:                      w.consumer,
			ConsumerGroup:                 group,
			NackResendSleep:               redisNackResend,
			BlockTime:                     redisBlockTime,
			ClaimInterval:                 claimInterval,
			MaxIdleTime:                   b.cfg.ClaimIdle,
			OldestId:                      "0",
			DisableIndefiniteInitialBlock: true,
			ShouldClaimPendingMessage:     w.shouldClaim,
			ShouldStopOnReadErrors:        w.onReadError,
		}, b.logger)
		if err != nil {
			return nil, fmt.Errorf("redis broker: %w", err)
		}
		w.sub = sub
		b.subs = append(b.subs, w)
		subs[i] = w
	}
	return subs, nil
}

// readerClient makes a client like c with its own pool of size, for
// blocking reads; other client kinds are shared as they are.
func readerClient(c goredis.UniversalClient, size int) (goredis.UniversalClient, bool) {
	switch c := c.(type) {
	case *goredis.Client:
		o := *c.Options()
		o.PoolSize, o.PushNotificationProcessor = size, nil // NewClient made one for c alone
		return goredis.NewClient(&o), true
	case *goredis.ClusterClient:
		o := *c.Options()
		o.PoolSize, o.PushNotificationProcessor = size, nil
		return goredis.NewClusterClient(&o), true
	}
	return c, false
}

func (b *Broker) aliveKey(stream, group, consumer string) string {
	return b.cfg.Prefix + "alive:" + strings.TrimPrefix(stream, b.cfg.Prefix) + ":" + group + ":" + consumer
}

// heartbeat keeps the alive keys of this replica's consumers from
// expiring until Close.
func (b *Broker) heartbeat() {
	defer close(b.done)
	t := time.NewTicker(max(b.cfg.ClaimIdle/3, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-t.C:
		}
		b.mu.Lock()
		keys := make([]string, 0, len(b.alive))
		for k := range b.alive {
			keys = append(keys, k)
		}
		b.mu.Unlock()
		if len(keys) == 0 {
			continue
		}
		ctx, cancel := context.WithTimeout(quiet(context.Background()), redisOpTimeout)
		_, err := b.client.Pipelined(ctx, func(p goredis.Pipeliner) error {
			for _, k := range keys {
				p.Set(ctx, k, b.replica, b.cfg.ClaimIdle)
			}
			return nil
		})
		cancel()
		if err != nil {
			b.logger.Error("consumer heartbeat failed", err, nil)
		}
	}
}

// Info says the broker is durable: a published message is in Redis (and
// in its AOF or RDB, as configured there).
func (b *Broker) Info() backend.Info { return backend.Info{System: "redis", Durable: true} }

// Admit lets every export in at once: the queue lives in Redis, not in
// this process's memory.
func (b *Broker) Admit(context.Context, time.Duration) (func(), bool) { return func() {}, true }

// Drain returns at once: what is queued stays in Redis for the next start,
// or for another replica to claim.
func (b *Broker) Drain(context.Context) error { return nil }

// Ready pings Redis.
func (b *Broker) Ready(ctx context.Context) error {
	if err := b.client.Ping(quiet(ctx)).Err(); err != nil {
		return fmt.Errorf("redis: %w", err)
	}
	return nil
}

// Risks reads the server's persistence and eviction settings.
func (b *Broker) Risks(ctx context.Context) []string {
	d, err := CheckDurability(quiet(ctx), b.client)
	if err != nil {
		return []string{"cannot tell whether redis persists queued exports: " + err.Error()}
	}
	return d.Risks()
}

// Close stops the subscribers and the heartbeat and releases what the
// broker created; the shared client stays open. Messages still pending
// under this replica become claimable by the others after claim_idle.
func (b *Broker) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.pubClosed.Store(true)
	subs, readers := b.subs, b.readers
	b.mu.Unlock()

	close(b.stop)
	<-b.done
	var errs []error
	for _, w := range subs {
		errs = append(errs, w.Close())
	}
	for _, r := range readers {
		errs = append(errs, r.Close())
	}
	return errors.Join(errs...)
}

// worker is one consumer. Subscribe never fails because Redis is
// down: it returns the channel at once and joins the group when Redis
// answers, so the daemon starts without Redis and recovers by itself.
type worker struct {
	b        *Broker
	client   goredis.UniversalClient
	sub      *redisstream.Subscriber
	stream   string
	group    string
	consumer string

	once    sync.Once
	closing chan struct{}
	wg      sync.WaitGroup
	started atomic.Bool
	// subMu orders the inner Subscribe and Close, which redisstream does not.
	subMu sync.Mutex
	// held has the ids of the entries Redis handed to this consumer, by
	// a reply we got, that are not acked yet (see "Lost replies").
	held sync.Map // stream entry id -> struct{}
	// users counts the workers sharing client, when the broker made it
	// for them: the last one closed closes it, so that workers closed
	// before the broker (a sink a reload stopped) leave no pool behind.
	users *atomic.Int32
}

func (w *worker) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	if w.b.cfg.Prefix+topic != w.stream {
		return nil, fmt.Errorf("redis broker: worker of %s asked for topic %s", w.stream, topic)
	}
	if !w.started.CompareAndSwap(false, true) {
		return nil, fmt.Errorf("redis broker: %s is already subscribed", w.consumer)
	}
	select {
	case <-w.closing:
		return nil, errors.New("redis broker: subscriber closed")
	default:
	}
	key := w.b.aliveKey(w.stream, w.group, w.consumer)
	w.b.mu.Lock()
	w.b.alive[key] = struct{}{}
	w.b.mu.Unlock()

	// Close cancels what Subscribe started, including a join that waits
	// for a Redis that does not answer.
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-w.closing:
		case <-ctx.Done():
		}
		cancel()
	}()
	out := make(chan *message.Message)
	w.wg.Add(1)
	go w.run(ctx, key, out)
	return out, nil
}

func (w *worker) subscribe(ctx context.Context) (<-chan *message.Message, error) {
	w.subMu.Lock()
	defer w.subMu.Unlock()
	select {
	case <-w.closing:
		return nil, errors.New("closed")
	default:
	}
	return w.sub.Subscribe(ctx, w.stream)
}

func (w *worker) run(ctx context.Context, key string, out chan<- *message.Message) {
	defer w.wg.Done()
	defer close(out)
	fields := watermill.LogFields{"stream": w.stream, "consumer": w.consumer}
	var in <-chan *message.Message
	for wait := 50 * time.Millisecond; ; wait = min(2*wait, redisSubscribeWait) {
		err := w.join(ctx, key)
		if err == nil {
			in, err = w.subscribe(ctx)
		}
		if err == nil {
			break
		}
		w.b.logger.Error("cannot subscribe yet, retrying", err, fields)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-w.closing:
			t.Stop()
			return
		case <-t.C:
		}
	}
	for {
		select {
		case m, ok := <-in:
			if !ok {
				select {
				case <-w.closing:
				case <-ctx.Done():
				default:
					w.b.logger.Error("redis subscriber stopped unexpectedly", nil, fields)
				}
				return
			}
			select {
			case out <- m:
			case <-w.closing:
				return // stays pending; claimed once this consumer is gone
			case <-ctx.Done():
				return
			}
		case <-w.closing:
			return
		case <-ctx.Done():
			return
		}
	}
}

// join creates the group, announces the consumer and hands entries left
// under this consumer's name by an earlier process to <name>-orphan.
func (w *worker) join(ctx context.Context, key string) error {
	ctx, cancel := context.WithTimeout(ctx, redisOpTimeout)
	defer cancel()
	err := w.client.XGroupCreateMkStream(ctx, w.stream, w.group, "0").Err()
	if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
		return fmt.Errorf("create group %s: %w", w.group, err)
	}
	if err := w.client.Set(ctx, key, w.b.replica, w.b.cfg.ClaimIdle).Err(); err != nil {
		return fmt.Errorf("heartbeat: %w", err)
	}
	for {
		left, err := w.client.XPendingExt(ctx, &goredis.XPendingExtArgs{
			Stream: w.stream, Group: w.group, Start: "-", End: "+", Count: 100, Consumer: w.consumer,
		}).Result()
		if err != nil {
			return fmt.Errorf("pending of %s: %w", w.consumer, err)
		}
		if len(left) == 0 {
			return nil
		}
		args := []any{"XCLAIM", w.stream, w.group, w.consumer + "-orphan", 0}
		for _, p := range left {
			args = append(args, p.ID)
		}
		args = append(args, "IDLE", w.b.cfg.ClaimIdle.Milliseconds(), "JUSTID")
		if err := w.client.Do(ctx, args...).Err(); err != nil {
			return fmt.Errorf("hand over entries of an earlier %s: %w", w.consumer, err)
		}
		w.b.logger.Info("handed over pending entries of an earlier process", watermill.LogFields{
			"stream": w.stream, "consumer": w.consumer, "entries": len(left)})
	}
}

// shouldClaim claims an idle pending entry only when its consumer has no
// heartbeat, or when it is this consumer's own and its reply was lost;
// when unsure (Redis error) it leaves the entry alone.
func (w *worker) shouldClaim(p goredis.XPendingExt) bool {
	if p.Consumer == w.consumer {
		_, held := w.held.Load(p.ID)
		return !held
	}
	ctx, cancel := context.WithTimeout(quiet(context.Background()), redisOpTimeout)
	defer cancel()
	n, err := w.client.Exists(ctx, w.b.aliveKey(w.stream, w.group, p.Consumer)).Result()
	return err == nil && n == 0
}

// onReadError keeps reading through errors; when Redis lost the group (a
// restart without persistence) it recreates it.
func (w *worker) onReadError(err error) bool {
	if strings.HasPrefix(err.Error(), "NOGROUP") {
		ctx, cancel := context.WithTimeout(quiet(context.Background()), redisOpTimeout)
		defer cancel()
		_ = w.client.XGroupCreateMkStream(ctx, w.stream, w.group, "0").Err()
	}
	return false
}

// Close stops the consumer and drops its heartbeat, so whatever it left
// pending is claimed by the others after claim_idle. Safe twice.
func (w *worker) Close() error {
	var err error
	w.once.Do(func() {
		close(w.closing)
		w.subMu.Lock()
		err = w.sub.Close()
		w.subMu.Unlock()
		w.wg.Wait()
		key := w.b.aliveKey(w.stream, w.group, w.consumer)
		w.b.mu.Lock()
		delete(w.b.alive, key)
		w.b.mu.Unlock()
		if w.started.Load() {
			ctx, cancel := context.WithTimeout(quiet(context.Background()), redisOpTimeout)
			_ = w.client.Del(ctx, key).Err() // best effort: it expires anyway
			cancel()
		}
		if w.users != nil && w.users.Add(-1) == 0 {
			err = errors.Join(err, w.b.releaseReader(w.client))
		}
	})
	return err
}

// releaseReader closes a reader client its workers no longer use; once
// the broker is closing, its Close closes the readers instead.
func (b *Broker) releaseReader(c goredis.UniversalClient) error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.readers = slices.DeleteFunc(b.readers, func(r goredis.UniversalClient) bool { return r == c })
	b.mu.Unlock()
	return c.Close()
}

// noCloseClient hands a client to watermill-redisstream, whose Close
// would otherwise close the client.
type noCloseClient struct{ goredis.UniversalClient }

func (noCloseClient) Close() error { return nil }

// heldClient is the subscriber's client: it notes in w.held which entries
// reached this consumer (read or claimed) and forgets them once acked.
// An entry is noted before the subscriber sees it, so a fresh delivery is
// never taken for a lost one.
type heldClient struct {
	noCloseClient
	w *worker
}

func (c heldClient) XReadGroup(ctx context.Context, a *goredis.XReadGroupArgs) *goredis.XStreamSliceCmd {
	cmd := c.noCloseClient.XReadGroup(ctx, a)
	for _, xs := range cmd.Val() {
		for _, m := range xs.Messages {
			c.w.held.Store(m.ID, struct{}{})
		}
	}
	return cmd
}

func (c heldClient) XClaim(ctx context.Context, a *goredis.XClaimArgs) *goredis.XMessageSliceCmd {
	cmd := c.noCloseClient.XClaim(ctx, a)
	for _, m := range cmd.Val() {
		c.w.held.Store(m.ID, struct{}{})
	}
	return cmd
}

func (c heldClient) XAck(ctx context.Context, stream, group string, ids ...string) *goredis.IntCmd {
	cmd := c.noCloseClient.XAck(ctx, stream, group, ids...)
	if cmd.Err() == nil {
		for _, id := range ids {
			c.w.held.Delete(id)
		}
	}
	return cmd
}

// quietLogger passes watermill's logs through but repeats an error with
// the same message at most once per interval: while Redis is down every
// worker would report every read.
type quietLogger struct {
	watermill.LoggerAdapter
	every time.Duration
	mu    *sync.Mutex
	last  map[string]*quietState
}

type quietState struct {
	at         time.Time
	suppressed int
}

func newQuietLogger(l watermill.LoggerAdapter, every time.Duration) watermill.LoggerAdapter {
	return quietLogger{LoggerAdapter: l, every: every, mu: &sync.Mutex{}, last: map[string]*quietState{}}
}

func (q quietLogger) Error(msg string, err error, fields watermill.LogFields) {
	q.mu.Lock()
	s := q.last[msg]
	if s == nil {
		s = &quietState{}
		q.last[msg] = s
	}
	now := time.Now()
	if !s.at.IsZero() && now.Sub(s.at) < q.every {
		s.suppressed++
		q.mu.Unlock()
		return
	}
	suppressed := s.suppressed
	s.at, s.suppressed = now, 0
	q.mu.Unlock()
	if suppressed > 0 {
		fields = fields.Add(watermill.LogFields{"repeats_suppressed": suppressed})
	}
	q.LoggerAdapter.Error(msg, err, fields)
}

func (q quietLogger) With(fields watermill.LogFields) watermill.LoggerAdapter {
	return quietLogger{LoggerAdapter: q.LoggerAdapter.With(fields), every: q.every, mu: q.mu, last: q.last}
}

var (
	_ backend.Broker     = (*Broker)(nil)
	_ message.Subscriber = (*worker)(nil)
)

// QueueStats reads a stream's group from Redis: XINFO GROUPS gives the
// pending count and the lag (entries not yet delivered); the oldest entry
// is the first pending one, or else the first after the last delivered.
// Stream ids start with their publish time in milliseconds.
func (b *Broker) QueueStats(ctx context.Context, topic, group string) (backend.QueueStat, error) {
	ctx = quiet(ctx) // scrapes and admission checks: traced only inside an export's span
	stream := b.cfg.Prefix + topic
	groups, err := b.client.XInfoGroups(ctx, stream).Result()
	if err != nil {
		if strings.Contains(err.Error(), "no such key") {
			return backend.QueueStat{}, nil
		}
		return backend.QueueStat{}, err
	}
	for _, g := range groups {
		if g.Name != group {
			continue
		}
		st := backend.QueueStat{Depth: g.Pending + max(g.Lag, 0)}
		var oldestID string
		if g.Pending > 0 {
			sum, err := b.client.XPending(ctx, stream, group).Result()
			if err != nil {
				return st, err
			}
			oldestID = sum.Lower
		} else if g.Lag > 0 {
			next, err := b.client.XRangeN(ctx, stream, "("+g.LastDeliveredID, "+", 1).Result()
			if err != nil {
				return st, err
			}
			if len(next) > 0 {
				oldestID = next[0].ID
			}
		}
		st.Oldest = streamIDTime(oldestID)
		return st, nil
	}
	return backend.QueueStat{}, nil
}

func streamIDTime(id string) time.Time {
	ms, _, ok := strings.Cut(id, "-")
	if !ok {
		return time.Time{}
	}
	n, err := strconv.ParseInt(ms, 10, 64)
	if err != nil {
		return time.Time{}
	}
	return time.UnixMilli(n)
}
