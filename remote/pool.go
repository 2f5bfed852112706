package remote

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// Pool keeps one Conn per host name. When a Conn dies the pool redials it
// in the background, waiting MinBackoff, then twice as long after each
// failure up to MaxBackoff; meanwhile Get fails at once with the reason.
type Pool struct {
	MinBackoff time.Duration // default 500ms; set before the first Get
	MaxBackoff time.Duration // default 30s

	cfg    Config
	lookup func(name string) (Target, error)
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // the redial goroutines

	mu     sync.Mutex
	hosts  map[string]*poolEntry
	closed bool
}

type poolEntry struct {
	conn      *Conn
	err       error         // why there is no live conn
	dialing   chan struct{} // closed when the first dial ends
	redialing bool
}

// NewPool makes a pool dialing with cfg. lookup names the Target for a host
// name (from the inventory); nil dials the name itself.
func NewPool(cfg Config, lookup func(name string) (Target, error)) *Pool {
	if lookup == nil {
		lookup = func(name string) (Target, error) { return Target{Host: name}, nil }
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Pool{cfg: cfg, lookup: lookup, ctx: ctx, cancel: cancel, hosts: map[string]*poolEntry{}}
}

// Get returns the live Conn to name, dialing it if it was never reached.
// ctx bounds that dial. While a lost connection is being redialed it fails
// at once, wrapping the reason.
func (p *Pool) Get(ctx context.Context, name string) (*Conn, error) {
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, fmt.Errorf("connect %s: pool %w", name, ErrClosed)
		}
		e := p.hosts[name]
		if e == nil {
			e = &poolEntry{}
			p.hosts[name] = e
		}
		switch {
		case e.conn != nil:
			c, err := e.conn, e.conn.Err()
			p.mu.Unlock()
			if err != nil {
				return nil, fmt.Errorf("connect %s: reconnecting: %w", name, err)
			}
			return c, nil
		case e.redialing:
			err := e.err
			p.mu.Unlock()
			return nil, fmt.Errorf("connect %s: reconnecting: %w", name, err)
		case e.dialing != nil:
			ch := e.dialing
			p.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return nil, fmt.Errorf("connect %s: %w", name, ctx.Err())
			}
		}
		ch := make(chan struct{})
		e.dialing = ch
		p.mu.Unlock()

		c, err := p.dial(ctx, name)

		p.mu.Lock()
		e.dialing = nil
		close(ch)
		if err == nil && p.closed {
			p.mu.Unlock()
			c.Close()
			return nil, fmt.Errorf("connect %s: pool %w", name, ErrClosed)
		}
		if err != nil {
			e.err = err
			p.mu.Unlock()
			return nil, err
		}
		e.conn = c
		p.wg.Add(1)
		go p.keep(name, e, c)
		p.mu.Unlock()
		return c, nil
	}
}

func (p *Pool) dial(ctx context.Context, name string) (*Conn, error) {
	t, err := p.lookup(name)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", name, err)
	}
	return Dial(ctx, t, p.cfg)
}

// keep waits for c to die, then redials name until it succeeds or the
// pool closes, and starts over with the new Conn.
func (p *Pool) keep(name string, e *poolEntry, c *Conn) {
	defer p.wg.Done()
	minB, maxB := p.MinBackoff, p.MaxBackoff
	if minB <= 0 {
		minB = 500 * time.Millisecond
	}
	if maxB <= 0 {
		maxB = 30 * time.Second
	}
	maxB = max(maxB, minB)
	for {
		select {
		case <-c.Done():
		case <-p.ctx.Done():
			return
		}
		p.mu.Lock()
		e.conn, e.err, e.redialing = nil, c.Err(), true
		p.mu.Unlock()
		for delay := minB; ; delay = min(2*delay, maxB) {
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-p.ctx.Done():
				t.Stop()
				return
			}
			nc, err := p.dial(p.ctx, name)
			p.mu.Lock()
			if err != nil {
				e.err = err
				p.mu.Unlock()
				continue
			}
			if p.closed {
				p.mu.Unlock()
				nc.Close()
				return
			}
			e.conn, e.err, e.redialing = nc, nil, false
			p.mu.Unlock()
			c = nc
			break
		}
	}
}

// Close closes every Conn and stops the redials.
func (p *Pool) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	var conns []*Conn
	for _, e := range p.hosts {
		if e.conn != nil {
			conns = append(conns, e.conn)
		}
	}
	p.mu.Unlock()
	p.cancel()
	for _, c := range conns {
		c.Close()
	}
	p.wg.Wait()
	return nil
}
