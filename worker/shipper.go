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

// shipChunk bounds one log append; the server also caps request bodies
// (max_log_append), and a smaller cap there halves the chunk down to
// minShipChunk.
const (
	shipChunk    = 1 << 20
	minShipChunk = 4 << 10
)

// shipper sends a run's console spool to the server by byte offset. The
// spool on disk is the buffer: while the server is unreachable the run goes
// on and the spool grows (bounded by the console cap); shipping resumes
// where the server's copy ends, so nothing is lost or sent twice.
//
// It is the run's live console writer, but it only uses writes as a nudge;
// the bytes themselves are always read back from the spool file.
type shipper struct {
	srv          Server // retries transient failures itself
	runID, fence string
	base         int64 // server offset of the spool's first byte
	path         string
	log          *slog.Logger

	ctx      context.Context // the loop's; finish ends it when it gives up
	stop     context.CancelFunc
	nudge    chan struct{}
	finishCh chan struct{}
	done     chan struct{}

	mu      sync.Mutex
	sent    int64 // bytes of the spool the server has
	chunk   int64 // bytes per append
	isStale bool
	failure error // set by finish: a run that failed before its sandbox
}

// newShipper starts shipping path's bytes until finish is called or ctx
// ends.
func newShipper(ctx context.Context, srv Server, runID, fence string, base int64, path string, log *slog.Logger) *shipper {
	s := &shipper{
		srv: srv, runID: runID, fence: fence, base: base, path: path, log: log, chunk: shipChunk,
		nudge: make(chan struct{}, 1), finishCh: make(chan struct{}), done: make(chan struct{}),
	}
	s.ctx, s.stop = context.WithCancel(ctx)
	go s.loop(s.ctx)
	return s
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
	s.stop()
	<-s.done
}

// loop ships until finish is called and the server has the whole spool,
// until the server refuses the console for good (a stale fence, a removed
// host), or until ctx ends. Transient failures are retried inside srv.
func (s *shipper) loop(ctx context.Context) {
	defer close(s.done)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	finishing := false
	for {
		caughtUp, err := s.shipAvailable(ctx)
		switch {
		case errors.Is(err, api.ErrTooLarge) && s.shrink():
			continue
		case errors.Is(err, api.ErrStaleFence):
			s.mu.Lock()
			s.isStale = true
			s.mu.Unlock()
			return
		case err != nil:
			if ctx.Err() == nil {
				s.log.Error("console shipping stopped", "err", err)
			}
			return
		}
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

// shrink halves the append size after the server refused one as too
// large; false when it is as small as it goes.
func (s *shipper) shrink() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.chunk <= minShipChunk {
		return false
	}
	s.chunk /= 2
	s.log.Warn("the server refused a console append as too large; sending smaller ones", "bytes", s.chunk)
	return true
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
	sent, chunk := s.sent, s.chunk
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
	buf := make([]byte, min(fi.Size()-sent, chunk))
	n, err := f.ReadAt(buf, sent)
	if err != nil && !errors.Is(err, io.EOF) {
		return false, err
	}
	if n == 0 {
		return true, nil
	}
	length, err := s.srv.AppendLog(ctx, s.runID, s.fence, s.base+sent, buf[:n])
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
	return int64(n) < chunk, nil
}

func (s *shipper) setSent(v int64) {
	s.mu.Lock()
	s.sent = max(0, v)
	s.mu.Unlock()
}

func (s *shipper) shipFailure(ctx context.Context) {
	s.mu.Lock()
	failure := s.failure
	s.mu.Unlock()
	if failure != nil {
		s.note(ctx, fmt.Sprintf("run failed on the host: %v", failure))
	}
}

// note appends a "[kiln] ..." line after what the server has of the
// console, once shipping is done: the run's end as the worker saw it.
func (s *shipper) note(ctx context.Context, msg string) {
	s.mu.Lock()
	sent := s.sent
	s.mu.Unlock()
	length, err := s.srv.AppendLog(ctx, s.runID, s.fence, s.base+sent, []byte("[kiln] "+msg+"\n"))
	if err != nil {
		s.log.Warn("console note", "err", err)
		return
	}
	s.setSent(length - s.base)
}
