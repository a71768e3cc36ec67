package web

import (
	"context"
	"sync"
	"time"

	"github.com/gessync/gessync/daemon"
)

// choiceTTL is how long the businesses, bank accounts and ledger accounts of a company are
// reused between page views, so that refreshing the settings page does not spend the
// business's Sage request allowance that the sync needs.
const choiceTTL = time.Minute

type choiceKey struct {
	company int64
	kind    string
}

type cachedChoices struct {
	at time.Time
	cs []daemon.Choice
}

// choiceCache keeps recent successful answers; errors are never kept.
type choiceCache struct {
	mu sync.Mutex
	m  map[choiceKey]cachedChoices
}

// get returns kind's choices for company, asking list when none are fresh.
func (c *choiceCache) get(ctx context.Context, now time.Time, company int64, kind string, list func(context.Context, int64) ([]daemon.Choice, error)) ([]daemon.Choice, error) {
	k := choiceKey{company, kind}
	c.mu.Lock()
	if v, ok := c.m[k]; ok && now.Sub(v.at) < choiceTTL {
		c.mu.Unlock()
		return v.cs, nil
	}
	c.mu.Unlock()
	cs, err := list(ctx, company)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.m == nil {
		c.m = map[choiceKey]cachedChoices{}
	}
	c.m[k] = cachedChoices{at: now, cs: cs}
	c.mu.Unlock()
	return cs, nil
}

// forget drops company's cached choices (after its settings or connection changed).
func (c *choiceCache) forget(company int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k := range c.m {
		if k.company == company {
			delete(c.m, k)
		}
	}
}

// cachedList wraps list with the server's cache under kind.
func (s *Server) cachedList(kind string, list func(context.Context, int64) ([]daemon.Choice, error)) func(context.Context, int64) ([]daemon.Choice, error) {
	return func(ctx context.Context, company int64) ([]daemon.Choice, error) {
		return s.cache.get(ctx, s.now(), company, kind, list)
	}
}
