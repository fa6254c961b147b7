package vm

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kiln-build/kiln/internal/testsupport"
	"github.com/kiln-build/kiln/sandbox"
)

// syncBuffer is a console that tests read while the guest writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newTestLauncher(t *testing.T) *Launcher {
	t.Helper()
	testsupport.NeedVM(t)
	l, err := New(Options{Dir: filepath.Join(t.TempDir(), "vm"), Accel: "tcg"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestGuestBoot boots one guest and checks, in that one boot, the exit
// code, the guest's own kernel, /in read-only, an artifact in /out, no NIC.
func TestGuestBoot(t *testing.T) {
	l := newTestLauncher(t)
	root := testsupport.BusyboxRootfs(t)
	in, out := t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(in, "src"), []byte("input"), 0o444)
	os.MkdirAll(filepath.Join(root, "work"), 0o755)
	script := `echo "kernel=$(uname -r)"
cat /in/src; echo
if touch /in/new 2>/dev/null; then echo in-writable; else echo in-readonly; fi
echo "nics=$(ls /sys/class/net | tr '\n' ' ')"
echo "cwd=$(pwd) host=$(hostname) v=$V"
echo artifact >/out/a.txt
exit 7`
	con := &syncBuffer{}
	start := time.Now()
	sb, err := l.Start(context.Background(), sandbox.Spec{
		RunID: "t1", Root: root, Args: []string{"/bin/sh", "-c", script}, Env: []string{"PATH=/bin:/usr/bin", "V=x y'z"},
		Cwd: "/work", Hostname: "guest1", Console: con,
		Mounts: []sandbox.Mount{{Source: in, Target: "/in", ReadOnly: true}, {Source: out, Target: "/out"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Delete(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	exit, err := sb.Wait(ctx)
	t.Logf("boot+run %s, console:\n%s", time.Since(start), con.String())
	if err != nil {
		t.Fatal(err)
	}
	if exit.Code != 7 {
		t.Errorf("exit = %+v, want 7", exit)
	}
	host, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	c := con.String()
	for _, want := range []string{"input", "in-readonly", "nics=lo \n", "cwd=/work host=guest1 v=x y'z"} {
		if !strings.Contains(c, want) {
			t.Errorf("console lacks %q", want)
		}
	}
	if !strings.Contains(c, "kernel=") || strings.Contains(c, "kernel="+strings.TrimSpace(string(host))+"\n") {
		t.Errorf("guest kernel is the host's (%s) or missing", strings.TrimSpace(string(host)))
	}
	if b, err := os.ReadFile(filepath.Join(out, "a.txt")); err != nil || string(b) != "artifact\n" {
		t.Errorf("artifact: %q %v", b, err)
	}
}
