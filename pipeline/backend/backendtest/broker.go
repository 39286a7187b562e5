package backendtest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/labelpipe/labelpipe/pipeline/backend"
)

// TestBroker checks the Broker contract on a fresh backend per subtest.
//
//   - Info: Broker() returns the same broker twice; Info().System is set,
//     Info().Durable matches Features.Durable, a broker that is not durable
//     says so in Info().Warning; Ready is nil.
//   - PublishSubscribe: messages published one by one and several in one
//     Publish arrive once each with UUID, payload and metadata intact.
//   - AckedNotRedelivered, NackedRedelivered: an acked message never comes
//     back; a nacked one comes back, intact, until acked.
//   - ConsumerGroups: two groups on one topic each get every message.
//   - Workers: Workers returns 1..n subscribers, and 30 messages are split
//     among a group's 3 workers, each delivered exactly once.
//   - WorkersAcrossInstances (SharedAcrossInstances): two backends' workers
//     in one group split the messages published through either.
//   - QueueStats: Depth is published-not-acked (5, then 3 after 2 acks,
//     then 0 with a zero Oldest); Oldest is the publish time; an unknown
//     topic is empty.
//   - QueueStatsPerGroup (PerGroupQueueStats): acks of one group leave the
//     other group's depth alone.
//   - Drain: nil once everything is acked; a durable broker returns nil at
//     once with a message unacked, one that is not durable reports the
//     message until it is acked and then returns nil.
//   - Admit: ok for the first caller; without BoundedAdmission every caller
//     gets in at once; with it, callers wait while MaxPending exports are
//     unfinished or admitted-not-done, and get in once one is acked or done,
//     and messages queued on one sink topic while another is empty never
//     make them wait.
//   - Durable (Durable): queued messages, and one delivered but unacked,
//     are delivered by a backend reopened on the same storage.
//   - Close: Close of the broker and of the backend are safe twice.
func TestBroker(t *testing.T, f Features, newBackend Constructor, reopen Reopener) {
	checkSetup(t, f, newBackend, reopen)
	t.Run("Info", func(t *testing.T) { testBrokerInfo(t, f, newBackend) })
	t.Run("PublishSubscribe", func(t *testing.T) { testPublishSubscribe(t, f, newBackend) })
	t.Run("AckedNotRedelivered", func(t *testing.T) { testAcked(t, f, newBackend) })
	t.Run("NackedRedelivered", func(t *testing.T) { testNacked(t, f, newBackend) })
	t.Run("ConsumerGroups", func(t *testing.T) { testConsumerGroups(t, f, newBackend) })
	t.Run("Workers", func(t *testing.T) { testWorkers(t, f, newBackend) })
	if f.SharedAcrossInstances {
		t.Run("WorkersAcrossInstances", func(t *testing.T) { testWorkersAcrossInstances(t, f, newBackend, reopen) })
	}
	t.Run("QueueStats", func(t *testing.T) { testQueueStats(t, newBackend) })
	if f.PerGroupQueueStats {
		t.Run("QueueStatsPerGroup", func(t *testing.T) { testQueueStatsPerGroup(t, f, newBackend) })
	}
	t.Run("Drain", func(t *testing.T) { testDrain(t, f, newBackend) })
	t.Run("Admit", func(t *testing.T) { testAdmit(t, f, newBackend) })
	if f.Durable {
		t.Run("Durable", func(t *testing.T) { testDurable(t, f, newBackend, reopen) })
	}
	t.Run("Close", func(t *testing.T) { testClose(t, newBackend) })
}

func testBrokerInfo(t *testing.T, f Features, newBackend Constructor) {
	b := newBackend(t)
	br := openBroker(t, b)
	if again := openBroker(t, b); again != br {
		t.Fatal("a second Broker() call returned another broker")
	}
	info := br.Info()
	if info.System == "" {
		t.Fatal("Info().System is empty")
	}
	if info.Durable != f.Durable {
		t.Fatalf("Info().Durable = %v, Features.Durable = %v", info.Durable, f.Durable)
	}
	if !info.Durable && info.Warning == "" {
		t.Fatal("a broker that is not durable gives no Info().Warning")
	}
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	if err := br.Ready(ctx); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	// A broker that is not durable says so in its risks too.
	if risks := br.Risks(ctx); !info.Durable && len(risks) == 0 {
		t.Fatal("Risks() is empty for a broker that is not durable")
	}
}

func testPublishSubscribe(t *testing.T, f Features, newBackend Constructor) {
	br := openBroker(t, newBackend(t))
	topic, group := backend.TopicSink("scale"), backend.SinkGroup("scale")
	in := subscribe(t, br, topic, group, 1)
	msgs := newMessages("pubsub", 4)
	publish(t, br, topic, msgs[0])
	publish(t, br, topic, msgs[1:]...) // several in one call
	in.consumeAll(t, msgs)
	in.quiet(t, f.settle(), "after every message was acked")
}

func testAcked(t *testing.T, f Features, newBackend Constructor) {
	br := openBroker(t, newBackend(t))
	topic, group := backend.TopicExports, backend.FanoutGroup
	in := subscribe(t, br, topic, group, 1)
	first := newMessage("acked")
	publish(t, br, topic, first)
	d := in.next(t, "the published message")
	sameMessage(t, d.msg, first)
	d.msg.Ack()

	// A message published after the ack arrives; the acked one must not
	// come back before it or within the settle time after it.
	sentinel := newMessage("sentinel")
	publish(t, br, topic, sentinel)
	d = in.next(t, "the message published after the ack")
	if d.msg.UUID == first.UUID {
		t.Fatalf("acked message %s delivered again", first.UUID)
	}
	sameMessage(t, d.msg, sentinel)
	d.msg.Ack()
	in.quiet(t, f.settle(), "after both messages were acked")
}

func testNacked(t *testing.T, f Features, newBackend Constructor) {
	br := openBroker(t, newBackend(t))
	topic, group := backend.TopicSink("scale"), backend.SinkGroup("scale")
	in := subscribe(t, br, topic, group, 1)
	m := newMessage("nacked")
	publish(t, br, topic, m)
	for i := range 2 {
		d := in.next(t, fmt.Sprintf("delivery %d of the message", i+1))
		sameMessage(t, d.msg, m)
		d.msg.Nack()
	}
	d := in.next(t, "the message after two nacks")
	sameMessage(t, d.msg, m)
	d.msg.Ack()
	in.quiet(t, f.settle(), "after the redelivered message was acked")
}

func testConsumerGroups(t *testing.T, f Features, newBackend Constructor) {
	br := openBroker(t, newBackend(t))
	topic := backend.TopicExports
	a := subscribe(t, br, topic, "group-a", 2)
	b := subscribe(t, br, topic, "group-b", 2)
	msgs := newMessages("groups", 5)
	publish(t, br, topic, msgs...)
	a.consumeAll(t, msgs)
	b.consumeAll(t, msgs)
	a.quiet(t, f.settle(), "group-a after every message was acked")
	b.quiet(t, f.settle(), "group-b after every message was acked")
}

func testWorkers(t *testing.T, f Features, newBackend Constructor) {
	br := openBroker(t, newBackend(t))
	one, err := br.Workers("single", "g", 1)
	if err != nil {
		t.Fatalf("Workers(single, g, 1): %v", err)
	}
	if len(one) != 1 {
		t.Fatalf("Workers(single, g, 1) returned %d subscribers", len(one))
	}

	topic, group := backend.TopicSink("labelbox"), backend.SinkGroup("labelbox")
	in := subscribe(t, br, topic, group, 3)
	msgs := newMessages("split", 30)
	publish(t, br, topic, msgs...)
	per := in.consumeAll(t, msgs)
	in.quiet(t, f.settle(), "after all 30 messages were acked")
	t.Logf("%d workers; messages per worker: %v", in.workers, per)
}

func testWorkersAcrossInstances(t *testing.T, f Features, newBackend Constructor, reopen Reopener) {
	b1 := newBackend(t)
	b2 := reopen(t, b1)
	br1, br2 := openBroker(t, b1), openBroker(t, b2)
	topic, group := backend.TopicSink("scale"), backend.SinkGroup("scale")
	in1 := subscribe(t, br1, topic, group, 1)
	in2 := subscribe(t, br2, topic, group, 1)
	msgs := newMessages("replicas", 20)
	publish(t, br1, topic, msgs[:10]...)
	publish(t, br2, topic, msgs[10:]...)

	// Both replicas' workers consume; together they get each message once.
	all := &inbox{name: topic + "/" + group + " (both backends)", workers: 2, c: make(chan delivery)}
	ctx := t.Context()
	for i, in := range []*inbox{in1, in2} {
		go func() {
			for {
				select {
				case d := <-in.c:
					d.worker = i
					select {
					case all.c <- d:
					case <-ctx.Done():
						return
					}
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	per := all.consumeAll(t, msgs)
	all.quiet(t, f.settle(), "after all 20 messages were acked")
	t.Logf("messages per backend: %v", per)
}

func testQueueStats(t *testing.T, newBackend Constructor) {
	ctx := t.Context()
	br := openBroker(t, newBackend(t))
	if st, err := br.QueueStats(ctx, "never-published", "g"); err != nil || st.Depth != 0 || !st.Oldest.IsZero() {
		t.Fatalf("QueueStats of an unknown topic: %+v, %v; want zero, nil", st, err)
	}

	topic, group := backend.TopicSink("scale"), backend.SinkGroup("scale")
	in := subscribe(t, br, topic, group, 1)
	before := time.Now()
	msgs := newMessages("stats", 5)
	publish(t, br, topic, msgs...)
	after := time.Now()

	waitDepth(t, br, topic, group, 5, before, after)
	for range 2 {
		d := in.next(t, "a message to ack")
		d.msg.Ack()
	}
	waitDepth(t, br, topic, group, 3, before, after)
	for range 3 {
		d := in.next(t, "a message to ack")
		d.msg.Ack()
	}
	waitDepth(t, br, topic, group, 0, before, after)
}

// waitDepth polls QueueStats until Depth is want, then checks Oldest: zero
// for an empty queue, else the publish time of the messages (published
// between before and after; a second's slack for clock granularity).
func waitDepth(t *testing.T, br backend.Broker, topic, group string, want int64, before, after time.Time) {
	t.Helper()
	var st backend.QueueStat
	eventually(t, fmt.Sprintf("QueueStats(%s, %s).Depth = %d", topic, group, want), func() (bool, string) {
		var err error
		st, err = br.QueueStats(t.Context(), topic, group)
		if err != nil {
			t.Fatalf("QueueStats: %v", err)
		}
		return st.Depth == want, fmt.Sprintf("%+v", st)
	})
	switch {
	case want == 0 && !st.Oldest.IsZero():
		t.Fatalf("QueueStats: Oldest %s with Depth 0, want zero", st.Oldest)
	case want > 0 && (st.Oldest.Before(before.Add(-time.Second)) || st.Oldest.After(after.Add(time.Second))):
		t.Fatalf("QueueStats: Oldest %s, want the publish time (between %s and %s)", st.Oldest, before, after)
	}
}

func testQueueStatsPerGroup(t *testing.T, f Features, newBackend Constructor) {
	br := openBroker(t, newBackend(t))
	topic := backend.TopicExports
	fast := subscribe(t, br, topic, "fast", 1)
	slow := subscribe(t, br, topic, "slow", 1)
	before := time.Now()
	msgs := newMessages("per-group", 3)
	publish(t, br, topic, msgs...)
	after := time.Now()
	waitDepth(t, br, topic, "slow", 3, before, after)
	fast.consumeAll(t, msgs)
	waitDepth(t, br, topic, "fast", 0, before, after)
	// Polled: an ack that reached the slow group late would show here.
	waitDepth(t, br, topic, "slow", 3, before, after)
	slow.consumeAll(t, msgs)
	waitDepth(t, br, topic, "slow", 0, before, after)
}

func testDrain(t *testing.T, f Features, newBackend Constructor) {
	br := openBroker(t, newBackend(t))
	drain := func(within time.Duration) error {
		ctx, cancel := context.WithTimeout(t.Context(), within)
		defer cancel()
		return br.Drain(ctx)
	}
	if err := drain(waitTimeout); err != nil {
		t.Fatalf("Drain of an idle broker: %v", err)
	}
	topic, group := backend.TopicSink("scale"), backend.SinkGroup("scale")
	in := subscribe(t, br, topic, group, 1)
	msgs := newMessages("drain", 3)
	publish(t, br, topic, msgs...)
	// Ack the first two to arrive (a worker may hand over the next only
	// after an ack) and hold the third.
	want, seen := byUUID(msgs), map[string]bool{}
	var held delivery
	for i := range len(msgs) {
		d := in.next(t, fmt.Sprintf("message %d of %d", i+1, len(msgs)))
		if _, ok := want[d.msg.UUID]; !ok || seen[d.msg.UUID] {
			t.Fatalf("unexpected or repeated message %s", d.msg.UUID)
		}
		seen[d.msg.UUID] = true
		if i < len(msgs)-1 {
			d.msg.Ack()
		} else {
			held = d
		}
	}

	if f.Durable {
		// What is queued stays in the storage: Drain must not wait for it.
		start := time.Now()
		if err := drain(2 * time.Second); err != nil {
			t.Fatalf("Drain of a durable broker with a message unacked: %v (after %s); want nil at once", err, time.Since(start))
		}
	} else {
		// The unacked message would be lost: Drain must say so when its
		// context ends, and return nil once the message is acked.
		if err := drain(100 * time.Millisecond); err == nil {
			t.Fatal("Drain returned nil with a message unacked on a broker that is not durable")
		} else {
			t.Logf("Drain with a message unacked: %v", err)
		}
		done := make(chan error, 1)
		go func() { done <- drain(waitTimeout) }()
		held.msg.Ack()
		if err := <-done; err != nil {
			t.Fatalf("Drain after the last message was acked: %v", err)
		}
		return
	}
	held.msg.Ack()
	if err := drain(waitTimeout); err != nil {
		t.Fatalf("Drain after every message was acked: %v", err)
	}
}

// admit calls Admit and checks that an ok comes with a done function.
func admit(t *testing.T, br backend.Broker, wait time.Duration) (func(), bool) {
	t.Helper()
	done, ok := br.Admit(t.Context(), wait)
	if ok && done == nil {
		t.Fatal("Admit: ok with a nil done")
	}
	return done, ok
}

// admitAsync runs Admit with a long wait in a goroutine.
func admitAsync(t *testing.T, br backend.Broker) <-chan func() {
	res := make(chan func(), 1)
	go func() {
		done, ok := br.Admit(t.Context(), waitTimeout)
		if !ok {
			done = nil
		}
		res <- done
	}()
	return res
}

// admitted waits for an admitAsync call to get in.
func admitted(t *testing.T, res <-chan func(), what string) func() {
	t.Helper()
	timer := time.NewTimer(waitTimeout + time.Second)
	defer timer.Stop()
	select {
	case done := <-res:
		if done == nil {
			t.Fatalf("%s: Admit gave up", what)
		}
		return done
	case <-timer.C:
		t.Fatalf("%s: Admit did not return", what)
		return nil
	}
}

func testAdmit(t *testing.T, f Features, newBackend Constructor) {
	br := openBroker(t, newBackend(t))
	done, ok := admit(t, br, 0)
	if !ok {
		t.Fatal("Admit refused the first caller of an empty broker")
	}
	done()

	if !f.BoundedAdmission {
		// Nothing is held in process: every caller gets in at once, done
		// or not.
		for i := range 50 {
			if _, ok := admit(t, br, 0); !ok {
				t.Fatalf("Admit refused caller %d of a broker without bounded admission", i+1)
			}
		}
		return
	}

	n := int(f.MaxPending)
	short := 50 * time.Millisecond // how long a refused caller waits

	// Callers admitted and not yet done hold the room.
	var dones []func()
	for i := range n {
		done, ok := admit(t, br, 0)
		if !ok {
			t.Fatalf("Admit refused caller %d of %d with the broker empty", i+1, n)
		}
		dones = append(dones, done)
	}
	if _, ok := admit(t, br, short); ok {
		t.Fatalf("Admit let a caller in while %d callers hold the room (MaxPending %d)", n, n)
	}
	waiter := admitAsync(t, br)
	dones[0]()
	dones = append(dones[1:], admitted(t, waiter, "waiter after a caller was done"))
	for _, done := range dones {
		done()
	}

	// Requests queued for one sink never hold the room while another
	// sink keeps up: a sink's queue is bounded by the engine, and a slow
	// vendor must not stop intake.
	subscribe(t, br, backend.TopicSink("labelbox"), backend.SinkGroup("labelbox"), 1)
	sinkMsgs := newMessages("sink-backlog", 3*n)
	publish(t, br, backend.TopicSink("scale"), sinkMsgs...)
	for i := range n {
		done, ok := admit(t, br, short)
		if !ok {
			t.Fatalf("Admit refused caller %d of %d while only a sink's queue holds messages", i+1, n)
		}
		dones[i] = done
	}
	for _, done := range dones {
		done()
	}

	// Unfinished exports hold the room until acked.
	topic, group := backend.TopicExports, backend.FanoutGroup
	// n workers: a broker may hand a worker its next message only after
	// an ack.
	in := subscribe(t, br, topic, group, n)
	msgs := newMessages("admit", n)
	publish(t, br, topic, msgs...)
	var held []*message.Message
	for range n {
		held = append(held, in.next(t, "a published message").msg)
	}
	if _, ok := admit(t, br, short); ok {
		t.Fatalf("Admit let a caller in while %d messages are unacked (MaxPending %d)", n, n)
	}
	waiter = admitAsync(t, br)
	held[0].Ack()
	admitted(t, waiter, "waiter after a message was acked")()
	for _, m := range held[1:] {
		m.Ack()
	}
	// With everything acked there is room for MaxPending callers again.
	dones = dones[:0]
	for i := range n {
		dones = append(dones, admitted(t, admitAsync(t, br), fmt.Sprintf("caller %d of %d after every message was acked", i+1, n)))
	}
	for _, done := range dones {
		done()
	}
}

func testDurable(t *testing.T, f Features, newBackend Constructor, reopen Reopener) {
	b1 := newBackend(t)
	br1 := openBroker(t, b1)
	topic, group := backend.TopicSink("scale"), backend.SinkGroup("scale")
	in1 := subscribe(t, br1, topic, group, 1)
	msgs := newMessages("durable", 4)
	publish(t, br1, topic, msgs...)
	inflight := in1.next(t, "the first message") // delivered, never acked
	// Nobody subscribed to this topic yet: it must be kept too.
	late := newMessage("no-subscriber-yet")
	publish(t, br1, backend.TopicExports, late)
	if err := b1.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	b2 := reopen(t, b1)
	br2 := openBroker(t, b2)
	in2 := subscribe(t, br2, topic, group, 1)
	// The in-flight message comes back (at least once); every message
	// arrives intact.
	want := byUUID(msgs)
	seen := map[string]int{}
	for len(seen) < len(want) {
		d := in2.next(t, fmt.Sprintf("%d of %d messages after reopening", len(seen), len(want)))
		w, ok := want[d.msg.UUID]
		if !ok {
			t.Fatalf("unexpected message %s after reopening", d.msg.UUID)
		}
		sameMessage(t, d.msg, w)
		seen[d.msg.UUID]++
		d.msg.Ack()
	}
	exports := subscribe(t, br2, backend.TopicExports, backend.FanoutGroup, 1)
	d := exports.next(t, "the message published before any group subscribed")
	sameMessage(t, d.msg, late)
	d.msg.Ack()
	t.Logf("deliveries after reopening: %v (in flight at close: %s)", seen, inflight.msg.UUID)
}

func testClose(t *testing.T, newBackend Constructor) {
	b := newBackend(t)
	br := openBroker(t, b)
	in := subscribe(t, br, backend.TopicExports, backend.FanoutGroup, 1)
	m := newMessage("close")
	publish(t, br, backend.TopicExports, m)
	d := in.next(t, "a message before close")
	d.msg.Ack()
	if err := br.Close(); err != nil {
		t.Fatalf("Broker.Close: %v", err)
	}
	if err := br.Close(); err != nil {
		t.Fatalf("second Broker.Close: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("Backend.Close after the broker's: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second Backend.Close: %v", err)
	}
	// A backend whose broker was never opened closes too.
	other := newBackend(t)
	if err := other.Close(); err != nil {
		t.Fatalf("Close of a backend without a broker: %v", err)
	}
	if err := other.Close(); err != nil {
		t.Fatalf("second Close of a backend without a broker: %v", err)
	}
}
