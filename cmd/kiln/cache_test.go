//go:build linux

package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/kiln-build/kiln/internal/testsupport"
)

// cacheFiles lists the files of one arch tree of a cache, relative to it.
func cacheFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, e os.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		if !e.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

// TestExecCaches drives host-defined caches through `kiln exec` on a real
// containerd: concurrent runs, failed runs, a job trying to replace or plant
// files, another arch, a missing cache, LRU and the cache commands.
func TestExecCaches(t *testing.T) {
	testsupport.NeedRoot(t)
	kiln := testsupport.BuildKiln(t)
	addr := testsupport.StartContainerd(t)
	cacheDir := filepath.Join(t.TempDir(), "c")
	h := testsupport.NewHost(t, kiln, addr, fmt.Sprintf("[caches.c]\ndir = %q\ntarget = \"/var/cache/t\"\nmax_size = \"1MiB\"\n", cacheDir))
	h.MustKiln(t, "image", "create", "-n", "busybox", "-m", "busybox", "-q")
	// kiln exec's runs are the host's own owner's.
	amd := filepath.Join(cacheDir, "owners", "local", "amd64")
	arm := filepath.Join(cacheDir, "owners", "local", "arm64")
	job := func(t *testing.T, image, script string) string {
		return testsupport.WriteFile(t, "job.toml", fmt.Sprintf("name = \"t\"\nimage = %q\ncaches = [\"c\"]\nscript = '''\n%s\n'''\n", image, script))
	}

	t.Run("concurrent", func(t *testing.T) {
		var wg sync.WaitGroup
		out := make([]string, 2)
		codes := make([]int, 2)
		for i := range 2 {
			wg.Go(func() {
				f := job(t, "busybox", fmt.Sprintf("mkdir -p /var/cache/t/archives && echo run%d > /var/cache/t/archives/shared.deb && echo %d > /var/cache/t/own%d && sleep 1", i, i, i))
				var errOut string
				out[i], errOut, codes[i] = h.Kiln(t, "exec", f)
				out[i] += errOut
			})
		}
		wg.Wait()
		for i := range 2 {
			if codes[i] != 0 {
				t.Fatalf("run %d: exit %d\n%s", i, codes[i], out[i])
			}
		}
		if got, want := cacheFiles(t, amd), []string{"archives/shared.deb", "own0", "own1"}; !slices.Equal(got, want) {
			t.Fatalf("cache holds %v, want %v", got, want)
		}
		data, _ := os.ReadFile(filepath.Join(amd, "archives", "shared.deb"))
		if s := string(data); s != "run0\n" && s != "run1\n" {
			t.Fatalf("shared.deb = %q, want one run's whole file", s)
		}
	})

	t.Run("sees-cache", func(t *testing.T) {
		want, _ := os.ReadFile(filepath.Join(amd, "archives", "shared.deb"))
		out := h.MustKiln(t, "exec", job(t, "busybox", "cat /var/cache/t/archives/shared.deb"))
		if !strings.Contains(out, string(want)) {
			t.Fatalf("the run did not see the cache's file %q:\n%s", want, out)
		}
	})

	t.Run("failed-run-merges-nothing", func(t *testing.T) {
		_, _, code := h.Kiln(t, "exec", job(t, "busybox", "echo x > /var/cache/t/failed && exit 3"))
		if code != 3 {
			t.Fatalf("exit %d, want 3", code)
		}
		if _, err := os.Lstat(filepath.Join(amd, "failed")); !os.IsNotExist(err) {
			t.Fatalf("a failed run's file reached the cache (%v)", err)
		}
	})

	t.Run("cannot-replace-or-plant", func(t *testing.T) {
		before, _ := os.ReadFile(filepath.Join(amd, "own0"))
		h.MustKiln(t, "exec", job(t, "busybox", `echo evil > /var/cache/t/own0
rm /var/cache/t/own1
ln -s /etc/shadow /var/cache/t/link
mkfifo /var/cache/t/fifo
mknod /var/cache/t/dev c 1 3 || true
mkdir -p /var/cache/t/d && ln -s / /var/cache/t/d/root`))
		after, _ := os.ReadFile(filepath.Join(amd, "own0"))
		if string(after) != string(before) {
			t.Fatalf("own0 = %q after a job rewrote it, want %q", after, before)
		}
		if got, want := cacheFiles(t, amd), []string{"archives/shared.deb", "own0", "own1"}; !slices.Equal(got, want) {
			t.Fatalf("cache holds %v, want %v", got, want)
		}
	})

	t.Run("missing-cache-refused", func(t *testing.T) {
		f := testsupport.WriteFile(t, "job.toml", "name = \"t\"\nimage = \"busybox\"\ncaches = [\"ccache\"]\nscript = \"touch /tmp/ran\"\n")
		_, errOut, code := h.Kiln(t, "exec", f)
		if code == 0 || !strings.Contains(errOut, `cache "ccache"`) || !strings.Contains(errOut, "[caches]") {
			t.Fatalf("exit %d, stderr %q; want a refusal naming the cache and [caches]", code, errOut)
		}
	})

	t.Run("arch-apart", func(t *testing.T) {
		testsupport.ForeignBusybox(t, "arm64")
		h.MustKiln(t, "image", "create", "-n", "bb-arm64", "-m", "busybox", "-a", "arm64", "-q")
		out := h.MustKiln(t, "exec", job(t, "bb-arm64", "uname -m; ls -A /var/cache/t | wc -l; echo arm > /var/cache/t/arm-only"))
		if !strings.Contains(out, "aarch64\n0\n") {
			t.Fatalf("an arm64 run saw amd64 files (or is no arm64 run):\n%s", out)
		}
		if got := cacheFiles(t, arm); !slices.Equal(got, []string{"arm-only"}) {
			t.Fatalf("arm64 tree holds %v", got)
		}
		if slices.Contains(cacheFiles(t, amd), "arm-only") {
			t.Fatal("an arm64 file reached the amd64 tree")
		}
	})

	t.Run("disk-limit", func(t *testing.T) {
		// 200 MiB into a cache from a run limited to 64 MiB: the cache's
		// layer is on the run's own filesystem, so the write fails there
		// and nothing of it lands on the data dir's filesystem.
		f := testsupport.WriteFile(t, "job.toml", "name = \"t\"\nimage = \"busybox\"\ncaches = [\"c\"]\n"+
			"script = \"head -c 209715200 /dev/zero > /var/cache/t/big || { echo write-failed; exit 7; }; echo wrote-all\"\n"+
			"[resources]\ndisk = \"64MiB\"\n")
		out, errOut, code := h.Kiln(t, "exec", f)
		// The write fails as one into /work past the limit does: ENOSPC,
		// or EIO where the overlay over the run's filesystem reports
		// that (seen on this development VM for /work too).
		if code != 7 || !strings.Contains(out, "write-failed") ||
			(!strings.Contains(out+errOut, "No space left on device") && !strings.Contains(out+errOut, "I/O error")) {
			t.Fatalf("exit %d; want the write to fail past the disk limit (exit 7)\n%s%s", code, out, errOut)
		}
		if slices.Contains(cacheFiles(t, amd), "big") {
			t.Fatal("a failed run's file reached the cache")
		}
	})

	t.Run("list", func(t *testing.T) {
		out := h.MustKiln(t, "cache", "list")
		for _, want := range []string{"c  ", cacheDir, "/var/cache/t", "local  amd64", "local  arm64"} {
			if !strings.Contains(out, want) {
				t.Fatalf("cache list lacks %q:\n%s", want, out)
			}
		}
		facts := h.MustKiln(t, "host", "facts")
		if !strings.Contains(facts, cacheDir+" -> /var/cache/t") {
			t.Fatalf("host facts do not list the cache:\n%s", facts)
		}
	})

	t.Run("lru", func(t *testing.T) {
		// Two files of 600 KiB do not fit in 1 MiB: merging the second
		// evicts the first and every older file.
		h.MustKiln(t, "exec", job(t, "busybox", "head -c 614400 /dev/zero > /var/cache/t/big1"))
		if !slices.Contains(cacheFiles(t, amd), "big1") {
			t.Fatal("big1 not merged")
		}
		h.MustKiln(t, "exec", job(t, "busybox", "head -c 614400 /dev/zero > /var/cache/t/big2"))
		if got := append(cacheFiles(t, amd), cacheFiles(t, arm)...); !slices.Equal(got, []string{"big2"}) {
			t.Fatalf("after LRU the cache holds %v, want only big2", got)
		}
		out := h.MustKiln(t, "cache", "prune", "--all")
		if !strings.Contains(out, "c: evicted 1 files, 614400 bytes") {
			t.Fatalf("prune --all: %s", out)
		}
		if got := cacheFiles(t, amd); len(got) != 0 {
			t.Fatalf("after prune --all the cache holds %v", got)
		}
	})

	// Every run's layer is unmounted and gone (the runs dir itself is a
	// nosuid,nodev bind mount).
	if out, err := exec.Command("grep", filepath.Join(h.Dir, "runs")+"/", "/proc/self/mountinfo").Output(); len(out) != 0 {
		t.Fatalf("mounts left under the runs dir: %s %v", out, err)
	}
}

// TestExecCachesBtrfs: with btrfs storage a disk-limited run's cache layer
// lives in its clone's subvolume (/.kiln-scratch, masked in the run), so
// what it writes into a cache counts against its disk limit; the job can
// neither see nor replace the scratch, and a run that succeeds still has
// its files merged.
func TestExecCachesBtrfs(t *testing.T) {
	testsupport.NeedRoot(t)
	kiln := testsupport.BuildKiln(t)
	addr := testsupport.StartContainerd(t)
	cacheDir := filepath.Join(t.TempDir(), "c")
	h := testsupport.NewHost(t, kiln, addr, fmt.Sprintf("[storage]\nkind = \"btrfs\"\nroot = %q\n[caches.c]\ndir = %q\ntarget = \"/var/cache/t\"\n",
		testsupport.Btrfs(t), cacheDir))
	h.MustKiln(t, "image", "create", "-n", "busybox", "-m", "busybox", "-q")
	amd := filepath.Join(cacheDir, "owners", "local", "amd64")
	job := func(t *testing.T, script string) string {
		return testsupport.WriteFile(t, "job.toml", "name = \"t\"\nimage = \"busybox\"\ncaches = [\"c\"]\n"+
			"script = '''\n"+script+"\n'''\n[resources]\ndisk = \"64MiB\"\n")
	}

	t.Run("disk-limit", func(t *testing.T) {
		out, errOut, code := h.Kiln(t, "exec", job(t, "head -c 209715200 /dev/zero > /var/cache/t/big || { echo write-failed; exit 7; }; echo wrote-all"))
		// EDQUOT from btrfs, or EIO where the cache's overlay reports that.
		if code != 7 || !strings.Contains(out, "write-failed") || !strings.Contains(out+errOut, "quota exceeded") && !strings.Contains(out+errOut, "I/O error") {
			t.Fatalf("exit %d; want the write to fail past the disk limit (exit 7)\n%s%s", code, out, errOut)
		}
		if slices.Contains(cacheFiles(t, amd), "big") {
			t.Fatal("a failed run's file reached the cache")
		}
	})

	t.Run("merged", func(t *testing.T) {
		h.MustKiln(t, "exec", job(t, "mkdir -p /var/cache/t/d && echo kept > /var/cache/t/d/kept"))
		if data, err := os.ReadFile(filepath.Join(amd, "d", "kept")); err != nil || string(data) != "kept\n" {
			t.Fatalf("d/kept in the cache = %q, %v; want the run's file merged", data, err)
		}
	})

	t.Run("scratch-out-of-reach", func(t *testing.T) {
		secret := filepath.Join(t.TempDir(), "host-secret")
		if err := os.WriteFile(secret, []byte("secret"), 0o644); err != nil {
			t.Fatal(err)
		}
		// Each attempt prints what it got; none may succeed, and the run
		// itself succeeds, so its caches are merged.
		out, errOut, code := h.Kiln(t, "exec", job(t, `try() { if "$@" 2>/dev/null; then echo "ok: $*"; else echo "refused: $*"; fi; }
echo "ls=[$(ls -A /.kiln-scratch)]"
try rm -rf /.kiln-scratch
try rmdir /.kiln-scratch
try mv /.kiln-scratch /moved
mkdir -p /evil/caches/c/upper && ln -s `+filepath.Dir(secret)+` /evil/caches/c/upper/stolen
try ln -sfn /evil /.kiln-scratch
try mv -T /evil /.kiln-scratch
try umount /.kiln-scratch
try umount -l /.kiln-scratch
try touch /.kiln-scratch/x
try mkdir /.kiln-scratch/caches
echo "after=[$(ls -A /.kiln-scratch)]"
echo mine > /var/cache/t/mine`))
		if code != 0 {
			t.Fatalf("exit %d\n%s%s", code, out, errOut)
		}
		if strings.Contains(out, "ok: ") || !strings.Contains(out, "ls=[]") || !strings.Contains(out, "after=[]") {
			t.Fatalf("the job reached /.kiln-scratch:\n%s", out)
		}
		if got, want := cacheFiles(t, amd), []string{"d/kept", "mine"}; !slices.Equal(got, want) {
			t.Fatalf("cache holds %v, want %v", got, want)
		}
	})

	t.Run("vm-refused", func(t *testing.T) {
		f := testsupport.WriteFile(t, "job.toml", "name = \"t\"\nimage = \"busybox\"\nisolation = \"vm\"\ncaches = [\"c\"]\nscript = \"true\"\n[resources]\ndisk = \"64MiB\"\n")
		_, errOut, code := h.Kiln(t, "exec", f)
		if code == 0 || !strings.Contains(errOut, "cannot name a cache") {
			t.Fatalf("exit %d, stderr %q; want a VM run with a cache and a disk limit refused", code, errOut)
		}
	})

	if out, err := exec.Command("grep", filepath.Join(h.Dir, "runs")+"/", "/proc/self/mountinfo").Output(); len(out) != 0 {
		t.Fatalf("mounts left under the runs dir: %s %v", out, err)
	}
}
