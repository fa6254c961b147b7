//go:build linux

package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/kiln-build/kiln/internal/testsupport"
)

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// consoleFacts reads "key=value" lines of a job's console.
func consoleFacts(out string) map[string]string {
	got := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(l), "="); ok {
			got[k] = v
		}
	}
	return got
}

// TestExecHardenedStorage drives `kiln exec` on overlay and on btrfs: the
// sandbox's root is an unprivileged host uid, yet the clone shows the
// image's ownership inside, /in is readable, and what the job leaves in
// /out comes back owned by the host's root.
func TestExecHardenedStorage(t *testing.T) {
	testsupport.NeedRoot(t)
	kiln := testsupport.BuildKiln(t)
	addr := testsupport.StartContainerd(t)
	storages := map[string]func(t *testing.T) string{
		"overlay": func(*testing.T) string { return "" },
		"btrfs": func(t *testing.T) string {
			return fmt.Sprintf("[storage]\nkind = \"btrfs\"\nroot = %q\n", testsupport.Btrfs(t))
		},
	}
	for _, kind := range []string{"overlay", "btrfs"} {
		t.Run(kind, func(t *testing.T) {
			h := testsupport.NewHost(t, kiln, addr, storages[kind](t))
			h.MustKiln(t, "image", "create", "-n", "busybox", "-m", "busybox", "-q")
			in := testsupport.WriteFile(t, "src.txt", "input-data\n")
			job := testsupport.WriteFile(t, "job.toml", `name = "t"
image = "busybox"
script = """
echo "uid_map=$(tr -s ' \t' ' ' </proc/self/uid_map | sed 's/^ //')"
echo "bin=$(stat -c %u:%g /bin/busybox)"
echo "work=$(stat -c %u:%g /work)"
echo "in=$(cat /in/src.txt)"
echo made >/out/made.txt && echo "out_owner=$(stat -c %u:%g /out/made.txt)"
touch /work/w && echo "work_write=$(stat -c %u /work/w)"
"""
[[inputs]]
path = "src.txt"
sha256 = "`+sha256Hex("input-data\n")+`"
`)
			outDir := filepath.Join(t.TempDir(), "out")
			out, errOut, code := h.Kiln(t, "exec", job, "--input", in, "-o", outDir)
			if code != 0 {
				t.Fatalf("exit %d: %s%s", code, out, errOut)
			}
			got := consoleFacts(out)
			if f := strings.Fields(got["uid_map"]); len(f) != 3 || f[1] == "0" {
				t.Errorf("uid_map %q: want root mapped onto an unprivileged host range", got["uid_map"])
			}
			for _, k := range []string{"bin", "work", "out_owner"} {
				if got[k] != "0:0" {
					t.Errorf("%s owned by %q inside, want 0:0", k, got[k])
				}
			}
			if got["in"] != "input-data" || got["work_write"] != "0" {
				t.Errorf("/in read %q, /work write owner %q", got["in"], got["work_write"])
			}
			st, err := os.Lstat(filepath.Join(outDir, "made.txt"))
			if err != nil {
				t.Fatalf("artifact: %v\n%s", err, out)
			}
			if uid := st.Sys().(*syscall.Stat_t).Uid; uid != 0 {
				t.Errorf("artifact owned by host uid %d, want 0", uid)
			}
			if ents, _ := os.ReadDir("/run/kiln/idmap"); len(ents) != 0 {
				// Other tests' sandboxes may be alive; only ours must be gone.
				for _, e := range ents {
					if strings.Contains(e.Name(), "-kiln-x-") {
						t.Errorf("idmapped mounts left: %s", e.Name())
					}
				}
			}
		})
	}
}

// TestExecRunUser: [run] user of the host config is who jobs run as on
// Linux (issue: it used to be read on FreeBSD only), and the job can still
// write /work and /out.
func TestExecRunUser(t *testing.T) {
	testsupport.NeedRoot(t)
	kiln := testsupport.BuildKiln(t)
	addr := testsupport.StartContainerd(t)
	// NewHost's extra TOML lands in its [run] table.
	h := testsupport.NewHost(t, kiln, addr, `user = "1234:2345"`)
	h.MustKiln(t, "image", "create", "-n", "busybox", "-m", "busybox", "-q")
	job := testsupport.WriteFile(t, "job.toml", `name = "t"
image = "busybox"
script = """
echo "ids=$(id -u):$(id -g)"
touch /work/w && echo made >/out/o && echo writes=ok
"""
`)
	out, errOut, code := h.Kiln(t, "exec", job, "-o", filepath.Join(t.TempDir(), "out"))
	if code != 0 {
		t.Fatalf("exit %d: %s%s", code, out, errOut)
	}
	if got := consoleFacts(out); got["ids"] != "1234:2345" || got["writes"] != "ok" {
		t.Fatalf("ran as %q, writes %q; want 1234:2345 and ok\n%s", got["ids"], got["writes"], out)
	}
}

// TestExecIsolation: `kiln exec` runs isolation = "gvisor" under runsc and
// mounts only the host tools the job names. (The refusal of a tier the host
// lacks: sandbox.TestCheckIsolation.)
func TestExecIsolation(t *testing.T) {
	testsupport.NeedRoot(t)
	testsupport.NeedCommand(t, "runsc")
	kiln := testsupport.BuildKiln(t)
	addr := testsupport.StartContainerd(t)
	tools := t.TempDir()
	for _, d := range []string{"a", "b"} {
		if err := os.Mkdir(filepath.Join(tools, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	h := testsupport.NewHost(t, kiln, addr, fmt.Sprintf("[host_tools]\na = %q\nb = %q\n", filepath.Join(tools, "a"), filepath.Join(tools, "b")))
	h.MustKiln(t, "image", "create", "-n", "busybox", "-m", "busybox", "-q")

	t.Run("gvisor", func(t *testing.T) {
		job := testsupport.WriteFile(t, "job.toml", `name = "t"
image = "busybox"
isolation = "gvisor"
script = "dmesg | grep -q gVisor && echo kernel=gvisor; echo made > /out/o"
`)
		out, errOut, code := h.Kiln(t, "exec", job, "-o", filepath.Join(t.TempDir(), "out"))
		if code != 0 || consoleFacts(out)["kernel"] != "gvisor" {
			t.Fatalf("exit %d, console %q: want a run under gVisor\n%s", code, out, errOut)
		}
	})
	t.Run("only named host tools", func(t *testing.T) {
		job := testsupport.WriteFile(t, "job.toml", "name = \"t\"\nimage = \"busybox\"\nhost_tools = [\"a\"]\nscript = \"test -d /host/a && echo a=yes; test -e /host/b && echo b=yes; true\"\n")
		out, errOut, code := h.Kiln(t, "exec", job)
		got := consoleFacts(out)
		if code != 0 || got["a"] != "yes" || got["b"] != "" {
			t.Fatalf("exit %d, a %q, b %q: want only /host/a\n%s", code, got["a"], got["b"], errOut)
		}
	})
}
