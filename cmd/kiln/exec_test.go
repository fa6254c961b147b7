//go:build linux

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd"

	"github.com/kiln-build/kiln/cache"
	"github.com/kiln-build/kiln/internal/testsupport"
	"github.com/kiln-build/kiln/linux/treestore"
)

// execEnv is one host with containerd, a busybox image and a kiln binary.
type execEnv struct {
	host *testsupport.Host
	ctr  *containerd.Client
}

func newExecEnv(t *testing.T) *execEnv { return newExecEnvWith(t, "") }

// newExecEnvWith is newExecEnv with extra host config (see testsupport.NewHost).
func newExecEnvWith(t *testing.T, extra string) *execEnv {
	testsupport.NeedRoot(t)
	kiln := testsupport.BuildKiln(t)
	addr := testsupport.StartContainerd(t)
	h := testsupport.NewHost(t, kiln, addr, extra)
	h.MustKiln(t, "image", "create", "-n", "busybox", "-m", "busybox", "-q")
	return &execEnv{host: h, ctr: testsupport.ContainerdClient(t, addr)}
}

func (e *execEnv) job(t *testing.T, body string) string {
	return testsupport.WriteFile(t, "job.toml", "name = \"t\"\nimage = \"busybox\"\n"+body)
}

// killMidRun starts `kiln exec` of a job whose script first prints
// "started", waits for that line, and SIGKILLs the exec.
func (e *execEnv) killMidRun(t *testing.T, body string) {
	t.Helper()
	cmd := exec.Command(e.host.Bin, "exec", e.job(t, body), "--config", e.host.ConfigPath)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, _ := stdout.Read(buf) // blocks until the job has printed
	if !strings.Contains(string(buf[:n]), "started") {
		t.Fatalf("job did not start: %q", buf[:n])
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
}

// leftovers lists kiln containers and clones still on the host.
func (e *execEnv) leftovers(t *testing.T) (containers, clones []string) {
	t.Helper()
	for _, c := range testsupport.Containers(t, e.ctr, e.host.Namespace) {
		containers = append(containers, c.ID())
	}
	ov, err := treestore.NewOverlay(filepath.Join(e.host.Dir, "storage"))
	if err != nil {
		t.Fatal(err)
	}
	cl, err := ov.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cl {
		clones = append(clones, c.RunID)
	}
	return containers, clones
}

func (e *execEnv) assertClean(t *testing.T) {
	t.Helper()
	if cs, cl := e.leftovers(t); len(cs)+len(cl) != 0 {
		t.Fatalf("left behind: containers %v, clones %v", cs, cl)
	}
}

func TestExec(t *testing.T) {
	e := newExecEnv(t)

	t.Run("exit codes pass through", func(t *testing.T) {
		for _, code := range []string{"0", "3", "42"} {
			out, errOut, got := e.host.Kiln(t, "exec", e.job(t, `script = "echo console-line; exit `+code+`"`))
			if want := atoi(code); got != want {
				t.Fatalf("exit %d, want %d\n%s", got, want, errOut)
			}
			if !strings.Contains(out, "console-line") {
				t.Fatalf("console not streamed to stdout: %q", out)
			}
		}
		e.assertClean(t)
	})

	t.Run("timeout", func(t *testing.T) {
		_, errOut, code := e.host.Kiln(t, "exec", e.job(t, "script = \"sleep 60\"\ntimeout = \"2s\"\n"))
		if code != 124 || !strings.Contains(errOut, "timed out") {
			t.Fatalf("exit %d, stderr %q: want 124 and 'timed out'", code, errOut)
		}
		e.assertClean(t)
	})

	t.Run("artifacts and hostile links", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "out")
		script := `script = """
set -e
echo data > /out/result.txt
mkdir -p /out/sub && echo deep > /out/sub/deep.txt
ln -s /etc/passwd /out/passwd
ln -s / /out/root
ln -s ../../.. /out/up
ln -s result.txt /out/good-link
"""`
		_, errOut, code := e.host.Kiln(t, "exec", e.job(t, script), "-o", out)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		if b, _ := os.ReadFile(filepath.Join(out, "sub", "deep.txt")); string(b) != "deep\n" {
			t.Fatalf("sub/deep.txt = %q", b)
		}
		for _, bad := range []string{"passwd", "root", "up"} {
			if _, err := os.Lstat(filepath.Join(out, bad)); err == nil {
				t.Errorf("hostile link %s was collected", bad)
			}
		}
		if l, _ := os.Readlink(filepath.Join(out, "good-link")); l != "result.txt" {
			t.Errorf("inside link not kept: %q", l)
		}
		// The same -o again: refused before anything runs, nothing overwritten.
		_, errOut, code = e.host.Kiln(t, "exec", e.job(t, `script = "echo new > /out/result.txt"`), "-o", out)
		if code == 0 || !strings.Contains(errOut, "not empty") {
			t.Fatalf("reusing a full -o dir: exit %d, %q", code, errOut)
		}
		if b, _ := os.ReadFile(filepath.Join(out, "result.txt")); string(b) != "data\n" {
			t.Fatalf("result.txt overwritten: %q", b)
		}
	})

	t.Run("inputs are read-only and verified", func(t *testing.T) {
		in := testsupport.WriteFile(t, "src.txt", "input-data\n")
		_, errOut, code := e.host.Kiln(t, "exec", e.job(t, `script = "cat /in/src.txt; touch /in/new && exit 9; echo ro > /in/src.txt && exit 8; exit 0"`), "--input", in)
		if code != 0 {
			t.Fatalf("exit %d (9/8: /in was writable): %s", code, errOut)
		}
		bad := e.job(t, "script = \"true\"\n[[inputs]]\npath = \"src.txt\"\nsha256 = \""+strings.Repeat("0", 64)+"\"\n")
		_, errOut, code = e.host.Kiln(t, "exec", bad, "--input", in)
		if code == 0 || !strings.Contains(errOut, "sha256 mismatch") {
			t.Fatalf("bad checksum: exit %d, %q", code, errOut)
		}
		e.assertClean(t)
	})

	t.Run("bad job files", func(t *testing.T) {
		for name, body := range map[string]string{
			"unknown key":   "name = \"t\"\nimage = \"busybox\"\nscript = \"true\"\nbogus = 1\n",
			"missing image": "name = \"t\"\nscript = \"true\"\n",
			"unknown image": "name = \"t\"\nimage = \"nosuch\"\nscript = \"true\"\n",
			"bad duration":  "name = \"t\"\nimage = \"busybox\"\nscript = \"true\"\ntimeout = \"x\"\n",
			"image escape":  "name = \"t\"\nimage = \"../busybox\"\nscript = \"true\"\n",
			"empty script":  "name = \"t\"\nimage = \"busybox\"\nscript = \"\"\n",
			"unknown hook":  "name = \"t\"\nimage = \"busybox\"\nscript = \"true\"\n[hooks]\npost = [\"lintian\"]\n",
		} {
			t.Run(name, func(t *testing.T) {
				_, errOut, code := e.host.Kiln(t, "exec", testsupport.WriteFile(t, "job.toml", body))
				lines := strings.Split(strings.TrimSpace(errOut), "\n")
				if code == 0 || len(lines) != 1 || !strings.HasPrefix(lines[0], "kiln: ") {
					t.Fatalf("exit %d, stderr %q: want a one-line error", code, errOut)
				}
			})
		}
		e.assertClean(t)
	})

	t.Run("kill -9 leaves an orphan the next exec reaps", func(t *testing.T) {
		e.killMidRun(t, `script = "echo started; sleep 300"`)
		cs, cl := e.leftovers(t)
		if len(cs) != 1 || len(cl) != 1 {
			t.Fatalf("after kill -9 expected one orphan container and clone, got %v %v", cs, cl)
		}
		e.host.MustKiln(t, "exec", e.job(t, `script = "true"`))
		e.assertClean(t)
	})

	t.Run("kill -9 of a bridge run: the next exec reaps its veth and lease", func(t *testing.T) {
		testsupport.NeedCNI(t)
		e.killMidRun(t, "script = \"echo started; sleep 300\"\n[resources]\nnetwork = \"bridge\"\n")
		recs, _ := filepath.Glob(filepath.Join(e.host.Dir, "network", "runs", "*", "attachment.json"))
		if len(recs) != 1 {
			t.Fatalf("after kill -9 expected one run's network, got %v", recs)
		}
		var att struct {
			Addr     string `json:"addr"`
			HostVeth string `json:"host_veth"`
		}
		if b, err := os.ReadFile(recs[0]); err != nil || json.Unmarshal(b, &att) != nil || att.HostVeth == "" {
			t.Fatalf("attachment %s: %v %s", recs[0], err, b)
		}
		lease := filepath.Join(e.host.Dir, "network", "ipam", "*", att.Addr)
		if l, _ := filepath.Glob(lease); len(l) != 1 {
			t.Fatalf("no lease of %s: %v", att.Addr, l)
		}
		if _, err := os.Stat("/sys/class/net/" + att.HostVeth); err != nil {
			t.Fatalf("veth %s of the killed run: %v", att.HostVeth, err)
		}
		e.host.MustKiln(t, "exec", e.job(t, `script = "true"`))
		e.assertClean(t)
		if _, err := os.Stat("/sys/class/net/" + att.HostVeth); !os.IsNotExist(err) {
			t.Errorf("veth %s outlived the reap: %v", att.HostVeth, err)
		}
		if l, _ := filepath.Glob(lease); len(l) != 0 {
			t.Errorf("lease outlived the reap: %v", l)
		}
		if left, _ := os.ReadDir(filepath.Join(e.host.Dir, "network", "runs")); len(left) != 0 {
			t.Errorf("network state outlived the reap: %v", left)
		}
	})

	t.Run("host network refused unless allowed", func(t *testing.T) {
		_, errOut, code := e.host.Kiln(t, "exec", e.job(t, "script = \"true\"\n[resources]\nnetwork = \"host\"\n"))
		if code == 0 || !strings.Contains(errOut, "allow_host_network") {
			t.Fatalf("exit %d, stderr %q: want a refusal naming allow_host_network", code, errOut)
		}
		e.assertClean(t)
	})

	t.Run("sigterm of exec tears down", func(t *testing.T) {
		cmd := exec.Command(e.host.Bin, "exec", e.job(t, `script = "echo started; sleep 300"`), "--config", e.host.ConfigPath)
		stdout, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64)
		stdout.Read(buf)
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(time.Minute):
			cmd.Process.Kill()
			t.Fatal("kiln exec did not stop after SIGTERM")
		}
		if cmd.ProcessState.ExitCode() == 0 {
			t.Fatal("a cancelled exec exited 0")
		}
		e.assertClean(t)
	})
}

func atoi(s string) int {
	n := 0
	for _, c := range s {
		n = n*10 + int(c-'0')
	}
	return n
}

// TestDebianSourceBuild builds a real Debian source package end to end: a
// debootstrap image, the job `kiln job template debian-source` prints, and
// `kiln exec` with its inputs; the .deb must come out. It runs twice with
// the host's apt cache: the second run downloads nothing. Long: the image
// and the build dependencies come from the distribution's mirror.
func TestDebianSourceBuild(t *testing.T) {
	if os.Getenv("KILN_LONG_TESTS") != "1" {
		t.Skip("long test: set KILN_LONG_TESTS=1")
	}
	testsupport.NeedCommand(t, "debootstrap")
	dsc := sourcePackage(t)
	aptCache := filepath.Join(t.TempDir(), "apt")
	e := newExecEnvWith(t, fmt.Sprintf("[caches.apt]\ndir = %q\ntarget = \"/var/cache/apt/archives\"\n", aptCache))
	e.host.MustKiln(t, "image", "create", "-n", "bookworm", "-m", "debootstrap", "-q")
	tmpl, err := kilnCmd(t, "job", "template", "debian-source", dsc, "--image", "bookworm", "--cache", "apt")
	if err != nil {
		t.Fatal(err)
	}
	job := testsupport.WriteFile(t, "deb.toml", tmpl)
	fetched := regexp.MustCompile(`Need to get [1-9]`)
	for i, want := range []string{"Need to get ", "Need to get 0 B"} {
		out := filepath.Join(t.TempDir(), "out")
		began := time.Now()
		stdout, stderr, code := e.host.Kiln(t, "exec", job, "-o", out,
			"--input", dsc, "--input", filepath.Join(filepath.Dir(dsc), "hello-kiln_1.0.tar.xz"))
		// The figures of docs/benchmarks.md (cold and warm apt cache).
		t.Logf("run %d: %s; apt said: %q", i+1, time.Since(began).Round(100*time.Millisecond),
			regexp.MustCompile(`Need to get [^\n]*`).FindAllString(stdout, -1))
		if code != 0 {
			t.Fatalf("run %d: exit %d\n%s\n%s", i+1, code, testsupport.Tail(stdout, 3000), stderr)
		}
		for _, f := range []string{"hello-kiln_1.0_all.deb", "hello-kiln_1.0_amd64.buildinfo", "hello-kiln_1.0_amd64.changes"} {
			if _, err := os.Stat(filepath.Join(out, f)); err != nil {
				ents, _ := os.ReadDir(out)
				t.Errorf("run %d: %s not collected (%v); /out had %v", i+1, f, err, ents)
			}
		}
		if !strings.Contains(stdout, want) || (i == 0) != fetched.MatchString(stdout) {
			t.Fatalf("run %d: want %q, and downloads only in the first run:\n%s", i+1, want, testsupport.Tail(stdout, 3000))
		}
	}
	tree, err := cache.Def{Name: "apt", Dir: aptCache}.Tree(cache.LocalOwner, "amd64")
	if err != nil {
		t.Fatal(err)
	}
	debs, _ := filepath.Glob(filepath.Join(tree, "*.deb"))
	if len(debs) == 0 {
		t.Fatal("the apt cache holds no .deb")
	}
	e.assertClean(t)
}
