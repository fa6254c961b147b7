package netcni

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/kiln-build/kiln/internal/durable"
)

// pool keeps networks made ahead (Config.Pool) under StateDir/pool/<id>,
// each complete with its namespace, veth, lease and rules, and known to
// the plugins by its own container ID (recorded in its idFile). A run
// takes one by renaming its directory to the run's: the rename is the
// claim, so two takers never get the same network, and the taken one
// never comes back.
type pool struct {
	mu      sync.Mutex
	filling bool // a fill goroutine runs
	again   bool // a network was taken while it ran
	closed  bool
	ctx     context.Context
	stop    context.CancelFunc
	wg      sync.WaitGroup
	cleaned bool // what an earlier process left half made is gone
}

func (c *CNI) poolDir() string { return filepath.Join(c.cfg.StateDir, "pool") }

// take moves a ready pooled network to dir, with a fresh resolv.conf.
func (c *CNI) take(dir string) (Attachment, bool) {
	entries, _ := os.ReadDir(c.poolDir())
	for _, e := range entries {
		src := filepath.Join(c.poolDir(), e.Name())
		a, ok := c.readyIn(src)
		if !ok {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
			return Attachment{}, false
		}
		// The namespace's bind mount moves with its directory.
		if err := os.Rename(src, dir); err != nil {
			continue // another taker was first
		}
		a.NetNS = filepath.Join(dir, "netns", filepath.Base(a.NetNS))
		a.ResolvConf = filepath.Join(dir, "resolv.conf")
		if resolv, _, err := sandboxResolvConf(c.dns, os.ReadFile); err == nil {
			_ = durable.WriteFile(a.ResolvConf, resolv, 0o644)
		}
		data, err := json.Marshal(a)
		if err == nil {
			err = durable.WriteFile(filepath.Join(dir, readyFile), data, 0o600)
		}
		if err != nil {
			// Not usable as recorded: leave it for Setup's own teardown.
			c.cfg.Log.Warn("pooled network unusable", "dir", dir, "err", err)
			return Attachment{}, false
		}
		return a, true
	}
	return Attachment{}, false
}

// readyIn reads the Attachment of a complete network of this subnet in dir.
func (c *CNI) readyIn(dir string) (Attachment, bool) {
	data, err := os.ReadFile(filepath.Join(dir, readyFile))
	if err != nil {
		return Attachment{}, false
	}
	var a Attachment
	if json.Unmarshal(data, &a) != nil || !c.subnet.Contains(a.Addr) {
		return Attachment{}, false
	}
	return a, true
}

// refill starts making networks until the pool is full again, in the
// background; a no-op when that is going on already or after Close.
func (c *CNI) refill() {
	p := &c.pool
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	if p.filling {
		p.again = true
		return
	}
	if p.ctx == nil {
		p.ctx, p.stop = context.WithCancel(context.Background())
	}
	p.filling = true
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c.fill(p.ctx)
			p.mu.Lock()
			if !p.again || p.closed {
				p.filling = false
				p.mu.Unlock()
				return
			}
			p.again = false
			p.mu.Unlock()
		}
	}()
}

// fill makes pooled networks until there are Config.Pool ready ones,
// first removing what an earlier process left half made (or made for
// another subnet).
func (c *CNI) fill(ctx context.Context) {
	entries, _ := os.ReadDir(c.poolDir())
	ready := 0
	for _, e := range entries {
		dir := filepath.Join(c.poolDir(), e.Name())
		if _, ok := c.readyIn(dir); ok {
			ready++
			continue
		}
		if !c.pool.cleaned {
			if err := c.teardown(ctx, e.Name(), dir); err != nil {
				c.cfg.Log.Warn("remove a half-made pooled network", "dir", dir, "err", err)
			}
		}
	}
	c.pool.cleaned = true
	for ; ready < c.cfg.Pool && ctx.Err() == nil; ready++ {
		b := make([]byte, 6)
		_, _ = rand.Read(b)
		id := "p" + hex.EncodeToString(b)
		if _, err := c.make(ctx, id, filepath.Join(c.poolDir(), id)); err != nil {
			if ctx.Err() == nil {
				c.cfg.Log.Warn("fill the pool", "err", err)
			}
			return
		}
	}
}

// Close stops filling the pool and tears down the networks in it (none
// of them was ever given to a run). ctx bounds the teardown.
func (c *CNI) Close(ctx context.Context) error {
	p := &c.pool
	p.mu.Lock()
	p.closed = true
	if p.stop != nil {
		p.stop()
	}
	p.mu.Unlock()
	p.wg.Wait()
	if c.cfg.Pool == 0 {
		return nil
	}
	entries, _ := os.ReadDir(c.poolDir())
	for _, e := range entries {
		if err := c.teardown(ctx, e.Name(), filepath.Join(c.poolDir(), e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// WaitPool blocks until the pool is full or ctx ends (benchmarks, tests);
// before the first Setup, which starts the filling, it returns at once.
func (c *CNI) WaitPool(ctx context.Context) error {
	c.pool.mu.Lock()
	started := c.pool.ctx != nil
	c.pool.mu.Unlock()
	for started {
		n := 0
		entries, _ := os.ReadDir(c.poolDir())
		for _, e := range entries {
			if _, ok := c.readyIn(filepath.Join(c.poolDir(), e.Name())); ok {
				n++
			}
		}
		if n >= c.cfg.Pool {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}
