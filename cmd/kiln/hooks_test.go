//go:build linux

package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-build/kiln/internal/testsupport"
	"github.com/kiln-build/kiln/qemu"
)

// hookEnv is an exec host whose config defines hooks that leave marker
// files named <job>.<hook> in marks, so a test can tell which hooks ran
// for which job and what they saw.
type hookEnv struct {
	*execEnv
	marks string
}

func newHookEnv(t *testing.T) *hookEnv {
	testsupport.NeedRoot(t)
	kiln := testsupport.BuildKiln(t)
	addr := testsupport.StartContainerd(t)
	marks := t.TempDir()
	script := func(name, body string) string {
		p := filepath.Join(marks, name+".sh")
		if err := os.WriteFile(p, []byte("set -u\nmark="+marks+"/$KILN_JOB."+name+"\n"+body), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cfg := fmt.Sprintf(`
[hooks.inspect]
stage = "post"
command = ["/bin/sh", %q]
[hooks.gate]
stage = "pre"
command = ["/bin/sh", %q]
[hooks.wipe]
stage = "cleanup"
command = ["/bin/sh", %q]
timeout = "1m"
`,
		// Fails on purpose after looking at the artifacts, like a lint
		// that finds something.
		script("inspect", `cat "$KILN_ARTIFACTS/result.txt" > "$mark"
echo "looked at result.txt"
exit 1
`),
		script("gate", `touch "$mark"
echo "gate says no" >&2
exit 2
`),
		script("wipe", `echo "exit=${KILN_EXIT-unset} clone=$([ -d "$KILN_CLONE/work" ] && echo present)" > "$mark"
`))
	h := testsupport.NewHost(t, kiln, addr, cfg)
	h.MustKiln(t, "image", "create", "-n", "busybox", "-m", "busybox", "-q")
	return &hookEnv{execEnv: &execEnv{host: h, ctr: testsupport.ContainerdClient(t, addr)}, marks: marks}
}

func (e *hookEnv) jobFile(t *testing.T, name, image, body string) string {
	return testsupport.WriteFile(t, "job.toml", fmt.Sprintf("name = %q\nimage = %q\n%s", name, image, body))
}

// mark returns what hook left for job, and whether it ran at all.
func (e *hookEnv) mark(t *testing.T, job, hook string) (string, bool) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(e.marks, job+"."+hook))
	if os.IsNotExist(err) {
		return "", false
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(b), true
}

func TestExecHooks(t *testing.T) {
	e := newHookEnv(t)

	t.Run("failing post hook sees artifacts, is reported, keeps them", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "out")
		job := e.jobFile(t, "post-fails", "busybox", `script = "echo built > /out/result.txt"
[hooks]
post = ["inspect"]
`)
		stdout, stderr, code := e.host.Kiln(t, "exec", job, "-o", out)
		if code != exitCheckFailed {
			t.Fatalf("exit %d, want %d (job fine, check failed)\n%s%s", code, exitCheckFailed, stdout, stderr)
		}
		if got, ran := e.mark(t, "post-fails", "inspect"); got != "built\n" {
			t.Fatalf("post hook ran=%v and saw %q in $KILN_ARTIFACTS/result.txt, want the artifact", ran, got)
		}
		if b, err := os.ReadFile(filepath.Join(out, "result.txt")); err != nil || string(b) != "built\n" {
			t.Fatalf("artifact after a failed check: %q, %v", b, err)
		}
		for _, want := range []string{"[hook inspect] looked at result.txt\n", "[kiln] hook inspect (post) exited 1\n"} {
			if !strings.Contains(stdout, want) {
				t.Errorf("console lacks %q:\n%s", want, stdout)
			}
		}
		if !strings.Contains(stderr, "check inspect (post hook) failed: exit status 1") {
			t.Errorf("stderr does not name the failed check:\n%s", stderr)
		}
		e.assertClean(t)
	})

	t.Run("job's own failure wins over a failed check", func(t *testing.T) {
		job := e.jobFile(t, "both-fail", "busybox", `script = "echo x > /out/result.txt; exit 42"
[hooks]
post = ["inspect"]
`)
		if _, stderr, code := e.host.Kiln(t, "exec", job, "-o", t.TempDir()); code != 42 {
			t.Fatalf("exit %d, want the job's 42\n%s", code, stderr)
		}
		if _, ran := e.mark(t, "both-fail", "inspect"); !ran {
			t.Fatal("post hook did not run after a failed job")
		}
	})

	t.Run("failing pre hook stops the run before start", func(t *testing.T) {
		job := e.jobFile(t, "pre-fails", "busybox", `script = "echo job-started"
[hooks]
pre = ["gate"]
cleanup = ["wipe"]
`)
		stdout, stderr, code := e.host.Kiln(t, "exec", job)
		if code == 0 || code == exitCheckFailed {
			t.Fatalf("exit %d, want a run failure\n%s%s", code, stdout, stderr)
		}
		if strings.Contains(stdout, "job-started") {
			t.Fatal("the job ran although its pre hook failed")
		}
		if !strings.Contains(stdout, "[hook gate] gate says no\n") || !strings.Contains(stderr, "pre hook gate") {
			t.Fatalf("pre hook failure not reported:\nstdout %s\nstderr %s", stdout, stderr)
		}
		if got, _ := e.mark(t, "pre-fails", "wipe"); got != "exit=unset clone=present\n" {
			t.Fatalf("cleanup hook after a failed pre hook left %q", got)
		}
		e.assertClean(t)
	})

	t.Run("cleanup hook runs after a job timeout", func(t *testing.T) {
		job := e.jobFile(t, "times-out", "busybox", `script = "sleep 60"
timeout = "2s"
[hooks]
cleanup = ["wipe"]
`)
		if _, stderr, code := e.host.Kiln(t, "exec", job); code != 124 {
			t.Fatalf("exit %d, want 124\n%s", code, stderr)
		}
		if got, _ := e.mark(t, "times-out", "wipe"); got != "exit=124 clone=present\n" {
			t.Fatalf("cleanup hook after a timeout left %q", got)
		}
		e.assertClean(t)
	})

	t.Run("undefined hook is refused before any clone", func(t *testing.T) {
		job := e.jobFile(t, "undefined", "busybox", `script = "echo job-started"
[hooks]
post = ["nosuch"]
cleanup = ["wipe"]
`)
		stdout, stderr, code := e.host.Kiln(t, "exec", job)
		if code == 0 || strings.Contains(stdout, "job-started") || !strings.Contains(stderr, `"nosuch"`) {
			t.Fatalf("exit %d, stdout %q, stderr %q: want a refusal naming the hook", code, stdout, stderr)
		}
		if _, ran := e.mark(t, "undefined", "wipe"); ran {
			t.Fatal("cleanup hook ran: the run got as far as its console")
		}
		e.assertClean(t)
	})

	t.Run("hook named for the wrong stage is refused", func(t *testing.T) {
		job := e.jobFile(t, "wrong-stage", "busybox", "script = \"true\"\n[hooks]\npre = [\"inspect\"]\n")
		if _, stderr, code := e.host.Kiln(t, "exec", job); code == 0 || !strings.Contains(stderr, "post hook") {
			t.Fatalf("exit %d, stderr %q: want a refusal saying inspect is a post hook", code, stderr)
		}
	})

	t.Run("arch without a handler is refused before any clone", func(t *testing.T) {
		caps, err := qemu.Detect(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		var arch string
		for _, a := range qemu.Known() {
			if !caps.Runnable(a) {
				arch = a
				break
			}
		}
		testsupport.Need(t, arch != "", "an architecture this host cannot run (every one has a handler)")
		// The tree is host-arch busybox; only the image's metadata says
		// otherwise, which is all the check before cloning looks at.
		e.host.MustKiln(t, "image", "create", "-n", "foreign", "-m", "dir="+testsupport.BusyboxRootfs(t), "-a", arch, "-q")
		job := e.jobFile(t, "foreign", "foreign", "script = \"echo job-started\"\n[hooks]\ncleanup = [\"wipe\"]\n")
		stdout, stderr, code := e.host.Kiln(t, "exec", job)
		if code == 0 || strings.Contains(stdout, "job-started") {
			t.Fatalf("exit %d, stdout %q: want a refusal", code, stdout)
		}
		for _, want := range []string{"cannot run " + arch, "qemu-user-static"} {
			if !strings.Contains(stderr, want) {
				t.Errorf("stderr %q lacks %q (what to install or enable)", stderr, want)
			}
		}
		if _, ran := e.mark(t, "foreign", "wipe"); ran {
			t.Fatal("cleanup hook ran: the run got as far as its console")
		}
		e.assertClean(t)
	})
}
