package sandbox

import (
	"fmt"
	"io"
	"os"
	"sync"
)

// Spool is a run's console on disk, bounded: past Cap bytes it writes one
// truncation notice and drops the rest while still accepting writes, so the
// job keeps running and never sees an error on its stdout.
//
// Safe for concurrent use (stdout and stderr copy into it at once).
type Spool struct {
	mu        sync.Mutex
	f         *os.File
	cap       int64
	written   int64
	dropped   int64
	truncated bool
	live      io.Writer
}

// openSpool creates (or truncates) the spool file at path. limit <= 0 means
// no cap. Everything that reaches the file is also copied to live when it is
// not nil; errors of live are ignored (a closed terminal must not kill a run).
// With appending set it continues an existing spool (a reattached run): the
// bytes already there count against the cap.
func openSpool(path string, limit int64, live io.Writer, appending bool) (*Spool, error) {
	flags := os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	if appending {
		flags = os.O_WRONLY | os.O_CREATE | os.O_APPEND
	}
	f, err := os.OpenFile(path, flags, 0o640)
	if err != nil {
		return nil, fmt.Errorf("console spool: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("console spool: %w", err)
	}
	return &Spool{f: f, cap: limit, live: live, written: st.Size()}, nil
}

// Write always reports len(p) written.
func (s *Spool) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(p)
	if s.truncated {
		s.dropped += int64(n)
		return n, nil
	}
	if s.cap > 0 && s.written+int64(len(p)) > s.cap {
		keep := max(0, s.cap-s.written) // notes may have gone past the cap
		s.dropped += int64(len(p)) - keep
		p = p[:keep]
		s.truncated = true
	}
	s.emit(p)
	if s.truncated {
		s.emit([]byte(fmt.Sprintf("\n[kiln] console truncated at %d bytes ([limits] console); the run goes on\n", s.cap)))
	}
	return n, nil
}

// noteReserve is how far past the cap kiln's own notes may go, so that how
// a run ended is still told after the job filled its console.
const noteReserve = 64 << 10

// Notef writes a line from kiln itself (not the job) into the console. Notes
// count against the cap like the job's output, but may use noteReserve
// bytes past it; beyond that they are dropped too, so that a job cannot
// grow its console without bound by making kiln write about it.
func (s *Spool) Notef(format string, a ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := []byte("[kiln] " + fmt.Sprintf(format, a...) + "\n")
	if s.cap > 0 && s.written+int64(len(p)) > s.cap+noteReserve {
		s.dropped += int64(len(p))
		s.truncated = true
		return
	}
	s.emit(p)
}

func (s *Spool) emit(p []byte) {
	if len(p) == 0 {
		return
	}
	if m, err := s.f.Write(p); err == nil {
		s.written += int64(m)
	}
	if s.live != nil {
		_, _ = s.live.Write(p)
	}
}

// Truncated reports whether the cap was hit, and how many bytes were dropped.
func (s *Spool) Truncated() (bool, int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.truncated, s.dropped
}

// Close syncs and closes the spool file.
func (s *Spool) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.f.Sync(); err != nil {
		s.f.Close()
		return err
	}
	return s.f.Close()
}
