package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/kiln-build/kiln/api"
)

// shipChunk bounds one log append; the server also caps request bodies.
const shipChunk = 1 << 20

// shipper sends a run's console spool to the server by byte offset. The
// spool on disk is the buffer: while the server is unreachable the run goes
// on and the spool grows (bounded by the console cap); shipping resumes
// where the server's copy ends, so nothing is lost or sent twice.
//
// It is the run's live console writer, but it only uses writes as a nudge;
// the bytes themselves are always read back from the spool file.
type shipper struct {
	client       *api.Client
	runID, fence string
	base         int64 // server offset of the spool's first byte
	path         string
	log          *slog.Logger

	nudge    chan struct{}
	finishCh chan struct{}
	done     chan struct{}

	mu      sync.Mutex
	sent    int64 // bytes of the spool the server has
	isStale bool
	failure error // set by finish: a run that failed before its sandbox
}

func newShipper(c *api.Client, runID, fence string, base int64, path string, log *slog.Logger) *shipper {
	return &shipper{
		client: c, runID: runID, fence: fence, base: base, path: path, log: log,
		nudge: make(chan struct{}, 1), finishCh: make(chan struct{}), done: make(chan struct{}),
	}
}

// Write nudges the shipper; it never blocks the job's output.
func (s *shipper) Write(p []byte) (int, error) {
	select {
	case s.nudge <- struct{}{}:
	default:
	}
	return len(p), nil
}

func (s *shipper) stale() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.isStale
}

// finish ships what is left (and runErr as a last line when the run failed
// before its sandbox) and stops, or gives up when ctx ends.
func (s *shipper) finish(ctx context.Context, runErr error) {
	s.mu.Lock()
	s.failure = runErr
	s.mu.Unlock()
	close(s.finishCh)
	select {
	case <-s.done:
	case <-ctx.Done():
		s.log.Warn("console not fully shipped", "err", ctx.Err())
	}
}

func (s *shipper) loop(ctx context.Context) {
	defer close(s.done)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	backoff := 500 * time.Millisecond
	finishing := false
	for {
		caughtUp, err := s.shipAvailable(ctx)
		switch {
		case errors.Is(err, api.ErrStaleFence):
			s.mu.Lock()
			s.isStale = true
			s.mu.Unlock()
			return
		case err != nil:
			s.log.Debug("ship console", "err", err, "retry_in", backoff)
			if finishing && ctx.Err() != nil {
				return
			}
			select {
			case <-time.After(jitter(backoff)):
			case <-ctx.Done():
				return
			}
			backoff = min(backoff*2, 15*time.Second)
			continue
		}
		backoff = 500 * time.Millisecond
		if finishing && caughtUp {
			s.shipFailure(ctx)
			return
		}
		if caughtUp {
			select {
			case <-s.nudge:
			case <-tick.C:
			case <-s.finishCh:
				finishing = true
			case <-ctx.Done():
				return
			}
		}
	}
}

// shipAvailable sends the next chunk of the spool; caughtUp reports that
// the server has all of the spool as it stands.
func (s *shipper) shipAvailable(ctx context.Context) (caughtUp bool, err error) {
	f, err := os.Open(s.path)
	if errors.Is(err, os.ErrNotExist) {
		return true, nil // the sandbox has not started yet
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	s.mu.Lock()
	sent := s.sent
	s.mu.Unlock()
	fi, err := f.Stat()
	if err != nil {
		return false, err
	}
	if fi.Size() <= sent {
		return true, nil
	}
	// Sized to what is there: most polls find a few lines, and a whole
	// chunk cleared for each would cost more than shipping them.
	buf := make([]byte, min(fi.Size()-sent, shipChunk))
	n, err := f.ReadAt(buf, sent)
	if err != nil && !errors.Is(err, io.EOF) {
		return false, err
	}
	if n == 0 {
		return true, nil
	}
	length, err := s.client.AppendLog(ctx, s.runID, s.fence, s.base+sent, buf[:n])
	if off, ok := api.LogResumeOffset(err); ok {
		// The server has more or less than we thought (a lost answer, or a
		// restart of ours): continue from its length.
		s.setSent(off - s.base)
		return false, nil
	}
	if err != nil {
		return false, err
	}
	s.setSent(length - s.base)
	return n < shipChunk, nil
}

func (s *shipper) setSent(v int64) {
	s.mu.Lock()
	s.sent = max(0, v)
	s.mu.Unlock()
}

func (s *shipper) shipFailure(ctx context.Context) {
	s.mu.Lock()
	failure, sent := s.failure, s.sent
	s.mu.Unlock()
	if failure == nil {
		return
	}
	line := []byte(fmt.Sprintf("[kiln] run failed on the host: %v\n", failure))
	if _, err := s.client.AppendLog(ctx, s.runID, s.fence, s.base+sent, line); err != nil {
		s.log.Warn("ship failure note", "err", err)
	}
}
