package resilience

import (
	"context"
	"encoding/json"

	"github.com/sony/gobreaker/v2"
)

// Reset closes the breaker at once and forgets its counts: an operator's
// word that the vendor is back, without waiting for the open period and a
// probe. With a shared store the closed state is written there: this
// replica and every replica whose view is closed or half-open go by it at
// once (within breaker.sync_interval); a replica that saw the breaker open
// honours that view without reading the store until its open period ends,
// and then finds it closed (no probe). from is the state the breaker was
// in. The store calls are made in ctx.
func (p *Policy) Reset(ctx context.Context) (from gobreaker.State, err error) {
	from = p.br.state(ctx)
	if err := p.br.reset(ctx); err != nil {
		return from, err
	}
	if from != gobreaker.StateClosed {
		p.stateChanged(from, gobreaker.StateClosed)
	} else {
		p.broadcast()
	}
	return from, nil
}

func (b *localBreaker) reset(context.Context) error {
	b.cb.Store(gobreaker.NewTwoStepCircuitBreaker[struct{}](b.settings))
	return nil
}

// reset writes a closed state of the next generation under the store's
// lock: outcomes of probes admitted before it no longer count.
func (b *sharedBreaker) reset(ctx context.Context) error {
	b.rec.Lock()
	defer b.rec.Unlock()
	return b.withStoreLock(ctx, func() error {
		data, err := b.held.GetData(b.key)
		if err != nil {
			return err
		}
		cur, _ := decode(data) // lost or unreadable: generation 0
		next, err := freshState(b.settings)
		if err != nil {
			return err
		}
		next.Generation = cur.Generation + 1
		raw, err := json.Marshal(next)
		if err != nil {
			return err
		}
		return b.held.SetData(b.key, raw)
	})
}

// freshState is the state a new breaker with settings writes: gobreaker
// makes it (its rolling buckets included), on a scratch store.
func freshState(settings gobreaker.Settings) (gobreaker.SharedState, error) {
	scratch := &scratchStore{}
	if _, err := gobreaker.NewDistributedCircuitBreaker[struct{}](scratch, settings); err != nil {
		return gobreaker.SharedState{}, err
	}
	return decode(scratch.data)
}

// scratchStore holds one breaker's state in memory, for freshState.
type scratchStore struct{ data []byte }

func (s *scratchStore) Lock(string) error   { return nil }
func (s *scratchStore) Unlock(string) error { return nil }
func (s *scratchStore) GetData(string) ([]byte, error) {
	return s.data, nil
}
func (s *scratchStore) SetData(_ string, data []byte) error {
	s.data = data
	return nil
}
