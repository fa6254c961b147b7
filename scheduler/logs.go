package scheduler

import (
	"context"
	"sync"
	"time"

	"github.com/kiln-build/kiln/api"
)

// notifier wakes long-polls waiting on a run (new log bytes, a state
// change). It carries no data: a woken reader re-reads the database, so a
// slow reader can never miss anything.
type notifier struct {
	mu sync.Mutex
	m  map[int64]chan struct{}
}

func newNotifier() *notifier { return &notifier{m: map[int64]chan struct{}{}} }

// wait returns a channel closed at the next notify of id. Take it before
// reading, so a change between the read and the wait is not missed.
func (n *notifier) wait(id int64) <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	ch, ok := n.m[id]
	if !ok {
		ch = make(chan struct{})
		n.m[id] = ch
	}
	return ch
}

// notifyAll wakes every waiter (notifications may have been lost).
func (n *notifier) notifyAll() {
	n.mu.Lock()
	m := n.m
	n.m = map[int64]chan struct{}{}
	n.mu.Unlock()
	for _, ch := range m {
		close(ch)
	}
}

// changed wakes the waiters on run id of this server and, with
// PostgreSQL, of every replica.
func (s *Server) changed(id int64) {
	s.notify.notify(id)
	if s.st.postgres() {
		s.pgNotify(id)
	}
}

func (n *notifier) notify(id int64) {
	n.mu.Lock()
	ch, ok := n.m[id]
	delete(n.m, id)
	n.mu.Unlock()
	if ok {
		close(ch)
	}
}

// appendLog appends console bytes of the current attempt at offset.
// Bytes the server already has are skipped (a repeated append is a no-op);
// a gap is refused with the server's length. Bytes beyond the console cap
// are counted but not stored.
func (s *Server) appendLog(ctx context.Context, host string, id int64, fence string, offset int64, data []byte) (int64, error) {
	length, err := s.st.appendLog(ctx, logAppend{host: host, id: id, fence: fence, offset: offset, data: data, consoleCap: s.consoleCap, now: s.now()})
	if err != nil {
		return length, err
	}
	s.changed(id)
	return length, nil
}

// logRead is one answer of readLog.
type logRead struct {
	data       []byte
	attempt    int
	size       int64
	state      string
	runAttempt int
	truncated  bool
}

// readLog returns stored console bytes of attempt (0: current) from offset,
// at most limit of them, waiting up to wait when there are none yet and
// more may come.
func (s *Server) readLog(ctx context.Context, id int64, attempt int, offset int64, limit int, wait time.Duration) (*logRead, error) {
	deadline := time.Now().Add(wait)
	for {
		changed := s.notify.wait(id)
		lr, err := s.readLogOnce(ctx, id, attempt, offset, limit)
		if err != nil {
			return nil, err
		}
		more := lr.attempt == lr.runAttempt && !api.Terminal(lr.state)
		left := time.Until(deadline)
		if len(lr.data) > 0 || offset < lr.size || !more || left <= 0 {
			return lr, nil
		}
		t := time.NewTimer(left)
		select {
		case <-changed:
			t.Stop()
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		}
	}
}

func (s *Server) readLogOnce(ctx context.Context, id int64, attempt int, offset int64, limit int) (*logRead, error) {
	lr := &logRead{}
	var logLen, stored int64
	var err error
	lr.state, lr.runAttempt, logLen, stored, err = s.st.logState(ctx, id)
	if err != nil {
		return nil, err
	}
	lr.attempt = attempt
	if attempt == 0 {
		lr.attempt = lr.runAttempt
	}
	if lr.attempt < 1 || lr.attempt > lr.runAttempt {
		return nil, badRequest("run %d has no attempt %d", id, attempt)
	}
	if lr.attempt == lr.runAttempt {
		lr.size, lr.truncated = stored, logLen > stored
	} else if lr.size, err = s.st.attemptLogSize(ctx, id, lr.attempt); err != nil {
		return nil, err
	}
	if offset < 0 || offset > lr.size {
		return nil, badRequest("offset %d is outside the log (%d bytes)", offset, lr.size)
	}
	if offset == lr.size {
		return lr, nil
	}
	err = s.st.logChunks(ctx, id, lr.attempt, offset, -1, func(off int64, b []byte) (bool, error) {
		if len(lr.data) >= limit {
			return false, nil
		}
		if off < offset {
			b = b[offset-off:]
		}
		lr.data = append(lr.data, b...)
		return true, nil
	})
	if len(lr.data) > limit {
		lr.data = lr.data[:limit]
	}
	return lr, err
}
