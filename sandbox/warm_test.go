package sandbox

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/kiln-build/kiln/cache"
	"github.com/kiln-build/kiln/errdefs"
)

// fakePreparer is a fakeLauncher that prepares sandboxes, recording them.
type fakePreparer struct {
	fakeLauncher
	mu       sync.Mutex
	prepared map[string]*fakePrepared // by Spec.RunID
}

type fakePrepared struct {
	spec    Spec
	deleted bool
	gone    bool // its init ended while it waited
}

func (p *fakePrepared) Start(ctx context.Context, a Adoption) (Sandbox, error) {
	if p.gone {
		return nil, fmt.Errorf("init ended: %w", errdefs.ErrNotFound)
	}
	sb := &fakeSandbox{exit: make(chan Exit, 1)}
	sb.exit <- Exit{}
	return sb, nil
}

func (p *fakePrepared) Delete(ctx context.Context) error {
	p.deleted = true
	return nil
}

func (f *fakePreparer) Prepare(ctx context.Context, spec Spec) (Prepared, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := &fakePrepared{spec: spec}
	f.prepared[spec.RunID] = p
	return p, nil
}

// idle returns the snapshots of the prepared sandboxes not deleted, by
// the clone they were made on.
func (f *fakePreparer) idle(st *fakeStorage) map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]int{}
	for id, p := range f.prepared {
		if !p.deleted {
			out[st.m[id].Snapshot]++
		}
	}
	return out
}

func newWarmRunner(t *testing.T) (*Runner, *fakeStorage, *fakePreparer) {
	r, st := newFakeRunner(t, nil)
	p := &fakePreparer{prepared: map[string]*fakePrepared{}}
	r.Launcher, r.WarmSlots = p, 2
	t.Cleanup(func() { r.Close(context.Background()) })
	return r, st, p
}

// The pool holds at most WarmSlots idle tasks per snapshot and maxWarm
// snapshots; warming a new version of an image drops its old version's.
func TestWarmPoolBounds(t *testing.T) {
	ctx := context.Background()
	r, st, p := newWarmRunner(t)
	for range 2 {
		if err := r.Warm(ctx, Request{Snapshot: "a@1"}); err != nil {
			t.Fatal(err)
		}
	}
	if got := p.idle(st); len(got) != 1 || got["a@1"] != 2 {
		t.Fatalf("after warming a@1 twice: %v, want 2 of a@1", got)
	}
	if err := r.Warm(ctx, Request{Snapshot: "a@2"}); err != nil {
		t.Fatal(err)
	}
	if got := p.idle(st); len(got) != 1 || got["a@2"] != 2 {
		t.Fatalf("after warming a@2: %v, want a@1's dropped, 2 of a@2", got)
	}
	for _, s := range []string{"b@1", "c@1", "d@1", "e@1"} {
		if err := r.Warm(ctx, Request{Snapshot: s}); err != nil {
			t.Fatal(err)
		}
	}
	if got := p.idle(st); len(got) != maxWarm || got["a@2"] != 0 || got["e@1"] != 2 {
		t.Fatalf("after warming 5 images: %v, want the %d newest, 2 each", got, maxWarm)
	}
	if n := len(st.m); n != 2*maxWarm {
		t.Errorf("%d clones, want %d: the dropped entries' clones must go", n, 2*maxWarm)
	}
	if err := r.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if got := p.idle(st); len(got) != 0 || len(st.m) != 0 {
		t.Errorf("after Close: tasks %v, clones %d; want none", got, len(st.m))
	}
}

// Only runs that nothing fixed at a warm task's creation sets apart take
// one.
func TestWarmable(t *testing.T) {
	r, _, _ := newWarmRunner(t)
	for _, tt := range []struct {
		name string
		req  Request
		want bool
	}{
		{"plain", Request{}, true},
		{"root in a directory below /work", Request{Cwd: "/work/a"}, true},
		{"job user in /work", Request{User: "1000", Cwd: "/work/"}, true},
		{"job user below /work", Request{User: "1000", Cwd: "/work/a"}, false},
		{"bridge network", Request{Resources: Resources{Network: NetworkBridge}}, false},
		{"gvisor", Request{Isolation: "gvisor"}, false},
		{"host tools", Request{HostTools: map[string]string{"x": "/opt/x"}}, false},
		{"caches", Request{Caches: []cache.Def{{Name: "apt"}}}, false},
		{"pre hook", Request{Hooks: []Hook{{Name: "h", Stage: StagePre}}}, false},
		{"post hook", Request{Hooks: []Hook{{Name: "h", Stage: StagePost}}}, true},
		{"env name the shell cannot export", Request{Env: map[string]string{"a.b": "1"}}, false},
		{"reattach", Request{Reattach: true}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := r.warmable(tt.req); got != tt.want {
				t.Errorf("warmable = %v, want %v", got, tt.want)
			}
		})
	}
}

// The entry gives the job its environment, working directory (made when
// missing), umask and script, however they are quoted.
func TestEntryScript(t *testing.T) {
	cwd := filepath.Join(t.TempDir(), "a", "b")
	entry := filepath.Join(t.TempDir(), "entry")
	env := []string{"PATH=" + os.Getenv("PATH"), `FOO=it's "x" $y \n`}
	script := `printf 'foo=%s\n' "$FOO"; echo "cwd=$(pwd)"; echo "umask=$(umask)"; exit 7`
	if err := os.WriteFile(entry, []byte(entryScript(env, cwd, script, "027")), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("/bin/sh", entry).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 7 {
		t.Fatalf("entry: %v, want exit 7\n%s", err, out)
	}
	want := "foo=it's \"x\" $y \\n\ncwd=" + cwd + "\numask=0027\n"
	if string(out) != want {
		t.Errorf("entry output:\n%s\nwant\n%s", out, want)
	}
	if strings.Contains(string(out), "PATH") {
		t.Error("the entry printed its exports")
	}
}

// A run whose warm task's init ended while it waited starts cold, with its
// inputs, and the dead task is dropped.
func TestWarmTaskGoneStartsCold(t *testing.T) {
	ctx := context.Background()
	r, st, p := newWarmRunner(t)
	r.WarmSlots = 1
	var coldIn string
	r.Launcher = &fakePreparer{prepared: p.prepared, fakeLauncher: fakeLauncher{start: func(ctx context.Context, spec Spec) (Sandbox, error) {
		for _, m := range spec.Mounts {
			if m.Target == "/in" {
				b, _ := os.ReadFile(filepath.Join(m.Source, "x"))
				coldIn = string(b)
			}
		}
		sb := &fakeSandbox{exit: make(chan Exit, 1)}
		sb.exit <- Exit{Code: 5}
		return sb, nil
	}}}
	if err := r.Warm(ctx, Request{Snapshot: "a@1"}); err != nil {
		t.Fatal(err)
	}
	for _, w := range p.prepared {
		w.gone = true
	}
	src := filepath.Join(t.TempDir(), "x")
	if err := os.WriteFile(src, []byte("input"), 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte("input"))
	res, err := r.Run(ctx, Request{RunID: "r1", Snapshot: "a@1", Script: "true",
		Inputs: []InputFile{{Path: "x", Source: src, SHA256: hex.EncodeToString(sum[:])}}})
	if err != nil || res.ExitCode() != 5 {
		t.Fatalf("run: %v, exit %d; want the cold start's 5", err, res.ExitCode())
	}
	if coldIn != "input" {
		t.Errorf("cold start's /in/x = %q, want the input", coldIn)
	}
	for id, w := range p.prepared {
		if !w.deleted {
			t.Errorf("dead warm task %s not deleted", id)
		}
	}
	if n := len(st.m); n != 0 {
		t.Errorf("%d clones left", n)
	}
}
