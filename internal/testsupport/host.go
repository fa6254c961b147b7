package testsupport

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Host is a kiln host for tests: its own data dir and host config, talking
// to a containerd the test started.
type Host struct {
	Dir        string // data_dir
	ConfigPath string
	Containerd string // containerd socket
	// Namespace is the host's containerd namespace: its own by default
	// (NewHost), so that a test can count a host's containers alone;
	// NewHostInNamespace puts hosts in one (the default configuration).
	Namespace string
	Bin       string // kiln binary
}

// NewHost writes a host config (overlay storage under a temp data dir,
// containerd at address, a bridge subnet of its own) plus any extra TOML,
// e.g. a [server] table; keys before extra's first table go into [run].
func NewHost(t testing.TB, kiln, containerdAddr, extra string) *Host {
	t.Helper()
	return NewHostInNamespace(t, kiln, containerdAddr, "", extra)
}

// NewHostInNamespace is NewHost with containerd namespace ns ("": one of
// the host's own; "kiln" is the default configuration's).
func NewHostInNamespace(t testing.TB, kiln, containerdAddr, ns, extra string) *Host {
	t.Helper()
	dir, err := os.MkdirTemp("", "kiln-host-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unmountBelow(dir); os.RemoveAll(dir) })
	if ns == "" {
		ns = "kiln-" + filepath.Base(dir)[len("kiln-host-"):]
	}
	cfg := fmt.Sprintf(`data_dir = %q
[containerd]
address = %q
namespace = %q
[run]
kill_grace = "2s"
%s
[network]
subnet = %q
`, dir, containerdAddr, ns, extra, Subnet(t))
	p := filepath.Join(dir, "worker.toml")
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return &Host{Dir: dir, ConfigPath: p, Containerd: containerdAddr, Namespace: ns, Bin: kiln}
}

// Kiln runs `kiln ARGS... --config <host config>` to completion and returns
// stdout, stderr and the exit code.
func (h *Host) Kiln(t testing.TB, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, h.Bin, append(args, "--config", h.ConfigPath)...)
	cmd.Dir = h.Dir // relative paths (e.g. exec's default ./artifacts) land in the host's temp dir
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	code = cmd.ProcessState.ExitCode()
	if err != nil && code < 0 {
		t.Fatalf("kiln %s: %v\n%s", strings.Join(args, " "), err, e.String())
	}
	return o.String(), e.String(), code
}

// MustKiln is Kiln that fails the test on a non-zero exit.
func (h *Host) MustKiln(t testing.TB, args ...string) string {
	t.Helper()
	out, errOut, code := h.Kiln(t, args...)
	if code != 0 {
		t.Fatalf("kiln %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// WriteFile writes content into a new temp file named name and returns its path.
func WriteFile(t testing.TB, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// Destroy removes the host's data dir as an admin would for good (mounts
// under it undone first), leaving whatever it had in containerd behind.
func (h *Host) Destroy(t testing.TB) {
	t.Helper()
	unmountBelow(h.Dir)
	if err := os.RemoveAll(h.Dir); err != nil {
		t.Fatalf("remove data dir %s: %v", h.Dir, err)
	}
}

// HostDir is a temporary data dir for a kiln process a test runs itself:
// removed at cleanup after every mount below it is detached (a worker
// mounts its runs dir nosuid,nodev, and a killed one leaves it mounted).
func HostDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "kiln-dir-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unmountBelow(dir); os.RemoveAll(dir) })
	return dir
}
