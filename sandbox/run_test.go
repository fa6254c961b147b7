package sandbox

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kiln-build/kiln/errdefs"
)

// fakeStorage is an honest in-memory Storage: clones are plain directories.
type fakeStorage struct {
	dir string
	mu  sync.Mutex
	m   map[string]Clone
}

func (f *fakeStorage) Kind() string { return "fake" }
func (f *fakeStorage) Clone(ctx context.Context, snap, run string) (Clone, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c, ok := f.m[run]; ok {
		return c, nil
	}
	c := Clone{RunID: run, Snapshot: snap, Root: filepath.Join(f.dir, run)}
	if err := os.MkdirAll(c.Root, 0o755); err != nil {
		return Clone{}, err
	}
	f.m[run] = c
	return c, nil
}
func (f *fakeStorage) Destroy(ctx context.Context, run string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.m, run)
	return os.RemoveAll(filepath.Join(f.dir, run))
}
func (f *fakeStorage) List(ctx context.Context) ([]Clone, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Clone
	for _, c := range f.m {
		out = append(out, c)
	}
	return out, nil
}

// fakeSandbox exits when told to (exit channel) or when signalled.
type fakeSandbox struct {
	exit     chan Exit
	ignoreTE bool // ignores SIGTERM, like a stubborn job
	deleted  bool
	mu       sync.Mutex
}

func (s *fakeSandbox) ID() string { return "fake" }
func (s *fakeSandbox) Wait(ctx context.Context) (Exit, error) {
	select {
	case e := <-s.exit:
		return e, nil
	case <-ctx.Done():
		return Exit{}, ctx.Err()
	}
}
func (s *fakeSandbox) Signal(ctx context.Context, sig Signal) error {
	if !s.ignoreTE {
		s.exit <- Exit{Code: 143, Signal: "SIGTERM"}
	}
	return nil
}
func (s *fakeSandbox) Kill(ctx context.Context) error {
	s.exit <- Exit{Code: 137, Signal: "SIGKILL"}
	return nil
}
func (s *fakeSandbox) Delete(ctx context.Context) error {
	s.mu.Lock()
	s.deleted = true
	s.mu.Unlock()
	return nil
}

type fakeLauncher struct {
	start func(ctx context.Context, spec Spec) (Sandbox, error)
	reap  func(ctx context.Context, keep func(string) bool) error
}

func (l *fakeLauncher) Start(ctx context.Context, spec Spec) (Sandbox, error) {
	return l.start(ctx, spec)
}
func (l *fakeLauncher) Reap(ctx context.Context, keep func(string) bool) error {
	if l.reap == nil {
		return nil
	}
	return l.reap(ctx, keep)
}

func newFakeRunner(t *testing.T, start func(ctx context.Context, spec Spec) (Sandbox, error)) (*Runner, *fakeStorage) {
	st := &fakeStorage{dir: t.TempDir(), m: map[string]Clone{}}
	return &Runner{Storage: st, Launcher: &fakeLauncher{start: start}, RunsDir: t.TempDir(), KillGrace: 50 * time.Millisecond}, st
}

func TestRunTeardownAlways(t *testing.T) {
	tests := []struct {
		name     string
		sandbox  *fakeSandbox
		exit     *Exit // sent at start; nil: never exits by itself
		timeout  time.Duration
		cancel   bool
		startErr error
		want     func(Result, error) string
	}{
		{name: "success", sandbox: &fakeSandbox{}, exit: &Exit{Code: 0}, want: func(r Result, err error) string {
			if err != nil || r.ExitCode() != 0 {
				return "want clean exit"
			}
			return ""
		}},
		{name: "exit code", sandbox: &fakeSandbox{}, exit: &Exit{Code: 42}, want: func(r Result, err error) string {
			if err != nil || r.ExitCode() != 42 {
				return "want code 42"
			}
			return ""
		}},
		{name: "timeout term", sandbox: &fakeSandbox{}, timeout: 20 * time.Millisecond, want: func(r Result, err error) string {
			if err != nil || !r.TimedOut || r.ExitCode() != 124 || r.Exit.Signal != "SIGTERM" {
				return "want timed out by SIGTERM"
			}
			return ""
		}},
		{name: "timeout kill", sandbox: &fakeSandbox{ignoreTE: true}, timeout: 20 * time.Millisecond, want: func(r Result, err error) string {
			if err != nil || !r.TimedOut || r.Exit.Signal != "SIGKILL" {
				return "want timed out by SIGKILL after the grace"
			}
			return ""
		}},
		{name: "cancel", sandbox: &fakeSandbox{ignoreTE: true}, cancel: true, want: func(r Result, err error) string {
			if err != nil || !r.Cancelled {
				return "want cancelled"
			}
			return ""
		}},
		{name: "start fails", startErr: errors.New("boom"), want: func(r Result, err error) string {
			if err == nil {
				return "want error"
			}
			return ""
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var spec Spec
			r, st := newFakeRunner(t, func(ctx context.Context, s Spec) (Sandbox, error) {
				spec = s
				if tt.startErr != nil {
					return nil, tt.startErr
				}
				tt.sandbox.exit = make(chan Exit, 2)
				if tt.exit != nil {
					tt.sandbox.exit <- *tt.exit
				}
				return tt.sandbox, nil
			})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tt.cancel {
				time.AfterFunc(20*time.Millisecond, cancel)
			}
			res, err := r.Run(ctx, Request{RunID: "r-1", Job: "j", Snapshot: "img@1", Script: "true", Timeout: tt.timeout, OutDir: t.TempDir()})
			if msg := tt.want(res, err); msg != "" {
				t.Fatalf("%s; got %+v, err %v", msg, res, err)
			}
			if clones, _ := st.List(context.Background()); len(clones) != 0 {
				t.Fatalf("clone left behind: %v", clones)
			}
			if tt.sandbox != nil && !tt.sandbox.deleted {
				t.Fatal("sandbox not deleted")
			}
			if tt.startErr == nil && (spec.Cwd != "/work" || spec.Hostname != "r-1") {
				t.Fatalf("spec: %+v", spec)
			}
		})
	}
}

func TestRunRefusesBadInputChecksumBeforeClone(t *testing.T) {
	started := false
	r, st := newFakeRunner(t, func(ctx context.Context, s Spec) (Sandbox, error) { started = true; return nil, errors.New("no") })
	src := filepath.Join(t.TempDir(), "in.txt")
	os.WriteFile(src, []byte("data"), 0o644)
	_, err := r.Run(context.Background(), Request{RunID: "r-2", Snapshot: "i@1", Script: "true",
		Inputs: []InputFile{{Path: "in.txt", Source: src, SHA256: "00"}}})
	if !errors.Is(err, ErrChecksum) {
		t.Fatalf("want ErrChecksum, got %v", err)
	}
	if started || len(st.m) != 0 {
		t.Fatal("sandbox started or clone made despite a bad input")
	}
}

func TestRunRefusesBadRunIDAndArch(t *testing.T) {
	r, _ := newFakeRunner(t, nil)
	for _, id := range []string{"", "../x", "A", "a/b", "-x"} {
		if _, err := r.Run(context.Background(), Request{RunID: id}); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("run id %q: want errdefs.ErrInvalid, got %v", id, err)
		}
	}
	r.CheckArch = func(ctx context.Context, arch string) error { return errdefs.ErrUnsupported }
	if _, err := r.Run(context.Background(), Request{RunID: "r-3", Arch: "mips"}); !errors.Is(err, errdefs.ErrUnsupported) {
		t.Fatalf("want errdefs.ErrUnsupported, got %v", err)
	}
}

func TestRunHostNetworkOnlyWhereAllowed(t *testing.T) {
	for _, tt := range []struct {
		name    string
		allow   bool
		network NetworkMode
		want    error // nil: the sandbox starts
	}{
		{"host refused by default", false, NetworkHost, errdefs.ErrUnsupported},
		{"host allowed", true, NetworkHost, nil},
		{"bridge needs no permission", false, NetworkBridge, nil},
		{"none", false, "", nil},
		{"unknown mode", true, "nat", errdefs.ErrInvalid},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var got *Spec
			r, st := newFakeRunner(t, func(ctx context.Context, s Spec) (Sandbox, error) {
				got = &s
				sb := &fakeSandbox{exit: make(chan Exit, 2)}
				sb.exit <- Exit{}
				return sb, nil
			})
			r.AllowHostNetwork = tt.allow
			_, err := r.Run(context.Background(), Request{RunID: "r-4", Snapshot: "i@1", Script: "true", Resources: Resources{Network: tt.network}})
			if tt.want != nil {
				if !errors.Is(err, tt.want) {
					t.Fatalf("want %v, got %v", tt.want, err)
				}
				if got != nil || len(st.m) != 0 {
					t.Fatal("a refused run made a clone or started a sandbox")
				}
				if tt.network == NetworkHost && !strings.Contains(err.Error(), "allow_host_network") {
					t.Errorf("error does not say how to allow it: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got == nil || got.Network != tt.network {
				t.Fatalf("spec network: %+v", got)
			}
		})
	}
}

func TestReapKeepsHeldRuns(t *testing.T) {
	r, st := newFakeRunner(t, nil)
	ctx := context.Background()
	st.Clone(ctx, "i@1", "live")
	st.Clone(ctx, "i@1", "dead")
	lock, err := acquireRunLock(filepath.Join(r.RunsDir, "live"))
	if err != nil {
		t.Fatal(err)
	}
	defer lock.release()
	os.MkdirAll(filepath.Join(r.RunsDir, "dead"), 0o755)
	var reaped []string
	r.Launcher = &fakeLauncher{reap: func(ctx context.Context, keep func(string) bool) error {
		for _, id := range []string{"live", "dead"} {
			if !keep(id) {
				reaped = append(reaped, id)
			}
		}
		return nil
	}}
	if err := r.Reap(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if len(reaped) != 1 || reaped[0] != "dead" {
		t.Fatalf("launcher reaped %v, want [dead]", reaped)
	}
	if _, ok := st.m["live"]; !ok {
		t.Fatal("live clone destroyed")
	}
	if _, ok := st.m["dead"]; ok {
		t.Fatal("dead clone kept")
	}
	if _, err := os.Stat(filepath.Join(r.RunsDir, "dead")); err == nil {
		t.Fatal("dead run dir kept")
	}
}

// panickyStorage makes the clone, then panics, as a bug in a backend might.
type panickyStorage struct{ *fakeStorage }

func (p panickyStorage) Clone(ctx context.Context, snap, run string) (Clone, error) {
	if _, err := p.fakeStorage.Clone(ctx, snap, run); err != nil {
		return Clone{}, err
	}
	panic("backend bug")
}

func TestRunTearsDownOnPanic(t *testing.T) {
	r, st := newFakeRunner(t, nil)
	r.Storage = panickyStorage{st}
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("the panic was swallowed")
			}
		}()
		r.Run(context.Background(), Request{RunID: "r-p", Snapshot: "i@1", Script: "true"})
	}()
	if clones, _ := st.List(context.Background()); len(clones) != 0 {
		t.Fatalf("clone left behind after a panic: %v", clones)
	}
}

func TestRunObservesPhases(t *testing.T) {
	tests := []struct {
		name     string
		startErr error
		want     []Phase
	}{
		{name: "success", want: []Phase{PhaseClone, PhaseStart, PhaseCollect, PhaseTeardown}},
		{name: "start fails", startErr: errors.New("boom"), want: []Phase{PhaseClone, PhaseStart, PhaseTeardown}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, _ := newFakeRunner(t, func(ctx context.Context, s Spec) (Sandbox, error) {
				if tt.startErr != nil {
					return nil, tt.startErr
				}
				sb := &fakeSandbox{exit: make(chan Exit, 2)}
				sb.exit <- Exit{}
				return sb, nil
			})
			var got []Phase
			r.Observe = func(p Phase, d time.Duration) {
				if d < 0 {
					t.Errorf("phase %s took %s", p, d)
				}
				got = append(got, p)
			}
			_, err := r.Run(context.Background(), Request{RunID: "r-o", Job: "j", Snapshot: "img@1", Script: "true", OutDir: t.TempDir()})
			if (err != nil) != (tt.startErr != nil) {
				t.Fatalf("run: %v", err)
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("observed %v, want %v", got, tt.want)
			}
		})
	}
}
