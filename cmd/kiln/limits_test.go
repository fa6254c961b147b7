//go:build linux

package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestExecHostile runs hostile jobs through `kiln exec` with the built-in
// [limits] (the test host config sets none): real containerd, runc,
// overlay storage.
func TestExecHostile(t *testing.T) {
	e := newExecEnv(t)

	t.Run("out link chains and 20000 files", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "out")
		script := `script = """
set -e
mkdir -p /out/c /out/many
ln -s . /out/c/y
ln -s y/y/y/../../../../.. /out/c/x
echo data > /out/c/real.txt
ln -s real.txt /out/c/good
i=0
while [ $i -lt 20000 ]; do : > /out/many/f$i; i=$((i+1)); done
"""`
		stdout, errOut, code := e.host.Kiln(t, "exec", e.job(t, script), "-o", out)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		for _, bad := range []string{"c/y", "c/x"} {
			if _, err := os.Lstat(filepath.Join(out, bad)); err == nil {
				t.Errorf("hostile link /out/%s was collected", bad)
			}
			if !strings.Contains(stdout, "artifact "+bad+" not collected") {
				t.Errorf("no console note for /out/%s:\n%s", bad, tail(stdout))
			}
		}
		if l, _ := os.Readlink(filepath.Join(out, "c", "good")); l != "real.txt" {
			t.Errorf("inside link not kept: %q", l)
		}
		ents, err := os.ReadDir(filepath.Join(out, "many"))
		if err != nil || len(ents) != 20000 {
			t.Fatalf("collected %d of 20000 files: %v", len(ents), err)
		}
		if fi, err := os.Stat(out); err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("artifact dir mode %v (%v), want 0700", fi.Mode().Perm(), err)
		}
		e.assertClean(t)
	})

	t.Run("100T sparse file in out", func(t *testing.T) {
		// ext4 (the overlay's disk-limited upper) stops at 16T a file:
		// then 15T stands in for 100T. busybox's truncate takes bytes.
		script := fmt.Sprintf(`script = "truncate -s %d /out/huge || truncate -s %d /out/huge; ls -l /out/huge"`, int64(100)<<40, int64(15)<<40)
		stdout, errOut, code := e.host.Kiln(t, "exec", e.job(t, script), "-o", filepath.Join(t.TempDir(), "out"))
		if code == 0 || !strings.Contains(errOut, "artifact_bytes") || !strings.Contains(errOut, "huge") {
			t.Fatalf("exit %d, stderr %q: want a refusal naming huge and artifact_bytes\n%s", code, errOut, tail(stdout))
		}
		e.assertClean(t)
	})

	t.Run("disk fill stopped", func(t *testing.T) {
		for _, dir := range []string{"/work", "/out", "/tmp"} {
			script := fmt.Sprintf("script = \"dd if=/dev/zero of=%s/fill bs=1M count=200 && exit 0 || exit 7\"\n[resources]\ndisk = \"32MiB\"\n", dir)
			stdout, errOut, code := e.host.Kiln(t, "exec", e.job(t, script), "-o", filepath.Join(t.TempDir(), "out"))
			if code != 7 || !strings.Contains(stdout, "No space left on device") {
				t.Fatalf("%s: exit %d, want 7 and ENOSPC\n%s%s", dir, code, tail(stdout), errOut)
			}
		}
		e.assertClean(t)
	})

	t.Run("over the host's maximum", func(t *testing.T) {
		for _, res := range []string{`memory = "100TiB"`, `disk = "1000TiB"`, `pids = 1000000`} {
			_, errOut, code := e.host.Kiln(t, "exec", e.job(t, "script = \"true\"\n[resources]\n"+res+"\n"))
			key, _, _ := strings.Cut(res, " ")
			if code == 0 || !strings.Contains(errOut, "job asks for "+key+"=") || !strings.Contains(errOut, "(max ") {
				t.Fatalf("%s: exit %d, stderr %q: want a refusal naming the maximum", res, code, errOut)
			}
		}
		e.assertClean(t)
	})

	t.Run("memory bomb", func(t *testing.T) {
		// Doubling a shell string passes the default 2GiB within a few
		// seconds; swap is bounded with memory, so the OOM killer ends it.
		script := `script = "x=0123456789abcdef; while :; do x=$x$x; done"` + "\ntimeout = \"5m\"\n"
		stdout, errOut, code := e.host.Kiln(t, "exec", e.job(t, script))
		if code != 128+int(syscall.SIGKILL) || !strings.Contains(errOut, "out of memory") || !strings.Contains(stdout, "out of memory") {
			t.Fatalf("exit %d, stderr %q: want 137 and 'out of memory' in the console and on stderr\n%s", code, errOut, tail(stdout))
		}
		e.assertClean(t)
	})

	t.Run("fork bomb", func(t *testing.T) {
		// Watch the sandbox's processes on the host while the bomb goes
		// off: the default pids limit (4096) must hold them.
		type peakOf struct {
			procs   int
			sandbox uint64
		}
		peak, stop := make(chan peakOf), make(chan struct{})
		go func() {
			var most peakOf
			for {
				select {
				case <-stop:
					peak <- most
					return
				default:
				}
				for sb, n := range sandboxProcs(t) {
					if n > most.procs {
						most = peakOf{n, sb}
					}
				}
			}
		}()
		// The script keeps running (without forking) so that the bomb
		// goes on until the timeout. The bomb starts in the background:
		// the script's own shell forks once, before the bomb, since a fork
		// it failed at the limit (a busy machine can let the bomb's first
		// children reach it between the shell's two forks of "b | b")
		// would end the script with 2 rather than the timeout. (A "(b)"
		// subshell does not do: busybox's ash never lets the bomb off.)
		script := "script = \"echo bombing; b() { b | b & }; b & while :; do :; done\"\ntimeout = \"10s\"\n"
		stdout, errOut, code := e.host.Kiln(t, "exec", e.job(t, script))
		close(stop)
		most := <-peak
		if most.procs > 4096 || most.procs < 100 {
			t.Errorf("%d processes of the sandbox at the bomb's peak: want the pids limit (4096) to hold, and the bomb to have gone off", most.procs)
		}
		if code != 124 || !strings.Contains(errOut, "timed out") || !strings.Contains(stdout, "process limit reached: the run could not make more than 4096 processes") {
			t.Fatalf("exit %d, stderr %q: want the timeout (124) to end the bomb, and the pids limit noted\n%s", code, errOut, tail(stdout))
		}
		// The host still forks, and no process of the bomb outlived it.
		if err := exec.Command("true").Run(); err != nil {
			t.Fatalf("the host cannot fork after the bomb: %v", err)
		}
		if left := sandboxProcs(t)[most.sandbox]; left != 0 {
			t.Errorf("%d processes of the sandbox outlived the bomb", left)
		}
		e.assertClean(t)
	})
}

// sandboxProcs counts the host's processes of each sandbox by its user
// namespace's uid range (host uids from 1<<30 up, 65536 a sandbox), so
// that other work on the host (parallel test packages, their sandboxes)
// does not count.
func sandboxProcs(t *testing.T) map[uint64]int {
	t.Helper()
	m, err := filepath.Glob("/proc/[0-9]*/status")
	if err != nil {
		t.Fatal(err)
	}
	n := map[uint64]int{}
	for _, p := range m {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // gone meanwhile
		}
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) > 1 && f[0] == "Uid:" {
				if uid, err := strconv.ParseUint(f[1], 10, 32); err == nil && uid >= 1<<30 {
					n[(uid-1<<30)/65536]++
				}
				break
			}
		}
	}
	return n
}

// tail is the end of a long console, for failure messages.
func tail(s string) string {
	if len(s) > 2000 {
		return "..." + s[len(s)-2000:]
	}
	return s
}
