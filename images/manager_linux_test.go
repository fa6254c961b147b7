package images_test

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/images"
	"github.com/kiln-build/kiln/internal/testsupport"
	"github.com/kiln-build/kiln/linux"
	"github.com/kiln-build/kiln/linux/treestore"
	"github.com/kiln-build/kiln/qemu"
	"github.com/kiln-build/kiln/sandbox"
	"github.com/kiln-build/kiln/zfsstore"
)

// env is one host's worth of image state in a temp dir: a storage backend
// and the metadata dir beside it.
type env struct {
	dir     string
	storage string // directory the backend keeps its trees under ("" for zfs)
	open    func() (sandbox.Backend, error)
	backend sandbox.Backend
	mgr     *images.Manager
}

// backends are the storage kinds the manager is tested on.
var backends = []string{"overlay", "btrfs", "zfs"}

func newEnv(t *testing.T) *env { return newEnvOn(t, "overlay") }

func newEnvOn(t *testing.T, kind string) *env {
	t.Helper()
	testsupport.NeedRoot(t)
	dir := t.TempDir()
	e := &env{dir: dir}
	switch kind {
	case "overlay":
		e.storage = filepath.Join(dir, "storage")
		e.open = func() (sandbox.Backend, error) { return treestore.NewOverlay(e.storage) }
	case "btrfs":
		e.storage = testsupport.Btrfs(t)
		e.open = func() (sandbox.Backend, error) { return treestore.NewBtrfs(e.storage) }
	case "zfs":
		parent := testsupport.ZFS(t)
		e.open = func() (sandbox.Backend, error) { return zfsstore.New(context.Background(), parent) }
	default:
		t.Fatalf("unknown backend %q", kind)
	}
	e.reopen(t)
	t.Cleanup(func() {
		// Clones are mounts: never leave one behind.
		clones, err := e.backend.List(context.Background())
		if err != nil {
			t.Errorf("list clones: %v", err)
		}
		for _, c := range clones {
			if err := e.backend.Destroy(context.Background(), c.RunID); err != nil {
				t.Errorf("destroy clone %s: %v", c.RunID, err)
			}
		}
	})
	return e
}

// reopen makes a fresh backend and Manager on the same state, as a new
// process would.
func (e *env) reopen(t *testing.T) {
	t.Helper()
	b, err := e.open()
	if err != nil {
		t.Fatalf("open backend: %v", err)
	}
	e.backend = b
	e.mgr = images.NewManager(b, filepath.Join(e.dir, "images"), images.Options{
		CacheDir: testsupport.CacheDir(),
		LogDir:   filepath.Join(e.dir, "logs"),
	})
}

func TestBusyboxLifecycle(t *testing.T) {
	for _, kind := range backends {
		t.Run(kind, func(t *testing.T) { testBusyboxLifecycle(t, newEnvOn(t, kind)) })
	}
}

func testBusyboxLifecycle(t *testing.T, e *env) {
	testsupport.Need(t, fileExists("/bin/busybox"), "/bin/busybox (busybox-static)")
	ctx := context.Background()
	var progress bytes.Buffer
	s1, err := e.mgr.Create(ctx, images.CreateOptions{Name: "bb", Method: "busybox", Progress: &progress})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if s1.Arch != qemu.Native() || s1.OS != "linux" || s1.Method != "busybox" || s1.Size == 0 || s1.Parent != "" {
		t.Errorf("snapshot metadata: %+v", s1)
	}
	if !strings.Contains(progress.String(), "committing bb@") {
		t.Errorf("progress does not say what it committed: %q", progress.String())
	}

	t.Run("create again refused", func(t *testing.T) {
		_, err := e.mgr.Create(ctx, images.CreateOptions{Name: "bb", Method: "busybox"})
		if !errors.Is(err, errdefs.ErrExists) {
			t.Fatalf("second Create: %v, want ErrExists", err)
		}
	})

	t.Run("list after reopen", func(t *testing.T) {
		e.reopen(t)
		imgs, err := e.mgr.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(imgs) != 1 || imgs[0].Name != "bb" || imgs[0].Snapshots != 1 || imgs[0].Newest.Ref() != s1.Ref() || imgs[0].Newest.Arch != s1.Arch {
			t.Errorf("List = %+v", imgs)
		}
	})

	// A run holds a clone of the first snapshot across the update.
	clone, err := e.backend.Clone(ctx, s1.Ref(), "run-old")
	if err != nil {
		t.Fatalf("Clone: %v", err)
	}
	if err := os.WriteFile(filepath.Join(clone.Root, "work", "mine"), []byte("kept"), 0o644); err != nil {
		t.Fatal(err)
	}
	s2, err := e.mgr.Update(ctx, "bb", nil)
	if err != nil {
		t.Fatalf("Update: %v", err)
	}
	s3, err := e.mgr.Update(ctx, "bb", nil) // same second as s2, most likely
	if err != nil {
		t.Fatalf("second Update: %v", err)
	}
	if s2.Parent != s1.Version || s3.Parent != s2.Version || !(s1.Version < s2.Version && s2.Version < s3.Version) {
		t.Errorf("versions/parents: %s, %s<-%s, %s<-%s", s1.Version, s2.Parent, s2.Version, s3.Parent, s3.Version)
	}
	if got, err := os.ReadFile(filepath.Join(clone.Root, "work", "mine")); err != nil || string(got) != "kept" {
		t.Errorf("the old run's clone lost its file: %q, %v", got, err)
	}
	if out, err := exec.Command(filepath.Join(clone.Root, "bin", "busybox"), "true").CombinedOutput(); err != nil {
		t.Errorf("old clone's busybox: %v %s", err, out)
	}

	for _, c := range []struct {
		ref, want string
	}{
		{"bb", s3.Version},
		{"bb@" + s1.Version, s1.Version},
		{"bb@" + s2.Version, s2.Version},
	} {
		t.Run("resolve "+c.ref, func(t *testing.T) {
			s, err := e.mgr.Resolve(ctx, c.ref)
			if err != nil || s.Version != c.want || s.Arch != qemu.Native() {
				t.Errorf("Resolve(%q) = %s (arch %s), %v; want version %s", c.ref, s.Version, s.Arch, err, c.want)
			}
		})
	}
	for _, ref := range []string{"nope", "bb@19990101T000000Z"} {
		t.Run("resolve unknown "+ref, func(t *testing.T) {
			_, err := e.mgr.Resolve(ctx, ref)
			if !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(err.Error(), "bb") {
				t.Errorf("Resolve(%q) = %v, want ErrNotFound naming what exists", ref, err)
			}
		})
	}

	t.Run("prune keeps newest and the one in use", func(t *testing.T) {
		if err := e.mgr.Prune(ctx, "bb", 1); err != nil {
			t.Fatal(err)
		}
		snaps, err := e.mgr.Snapshots(ctx, "bb")
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, s := range snaps {
			got = append(got, s.Version)
		}
		if want := []string{s1.Version, s3.Version}; fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("after prune: %v, want %v", got, want)
		}
		if _, err := os.Stat(filepath.Join(e.dir, "images", "bb", s2.Version+".json")); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("metadata of the pruned snapshot remains: %v", err)
		}
	})

	t.Run("delete refused while in use", func(t *testing.T) {
		err := e.mgr.Delete(ctx, "bb", false)
		if !errors.Is(err, errdefs.ErrBusy) || !strings.Contains(err.Error(), "run-old") {
			t.Fatalf("Delete = %v, want ErrBusy naming run-old", err)
		}
	})
	t.Run("delete force", func(t *testing.T) {
		if err := e.mgr.Delete(ctx, "bb", true); err != nil {
			t.Fatal(err)
		}
		if imgs, err := e.mgr.List(ctx); err != nil || len(imgs) != 0 {
			t.Errorf("List after delete = %v, %v", imgs, err)
		}
		if clones, _ := e.backend.List(ctx); len(clones) != 0 {
			t.Errorf("clones left: %v", clones)
		}
		if _, err := os.Stat(filepath.Join(e.dir, "images", "bb")); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("metadata dir remains: %v", err)
		}
		if err := e.mgr.Delete(ctx, "bb", false); !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("deleting again: %v, want ErrNotFound", err)
		}
	})
}

func TestForeignBusyboxImage(t *testing.T) {
	testsupport.NeedCommand(t, "apt-get")
	testsupport.NeedCommand(t, "dpkg")
	e := newEnv(t)
	ctx := context.Background()
	s, err := e.mgr.Create(ctx, images.CreateOptions{Name: "bb-arm64", Method: "busybox", Arch: "aarch64"})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	got, err := e.mgr.Resolve(ctx, "bb-arm64")
	if err != nil || got.Arch != "arm64" {
		t.Fatalf("Resolve = %+v, %v; want arch arm64", got, err)
	}
	c, err := e.backend.Clone(ctx, s.Ref(), "run-arm")
	if err != nil {
		t.Fatal(err)
	}
	f, err := elf.Open(filepath.Join(c.Root, "bin", "busybox"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Machine != elf.EM_AARCH64 {
		t.Errorf("bin/busybox is %v, want EM_AARCH64", f.Machine)
	}
	// Through the host's binfmt handler, as a sandbox would run it.
	caps, err := qemu.Detect(ctx)
	testsupport.Need(t, err == nil && caps.Runnable("arm64"), "a qemu-aarch64 binfmt_misc handler with the F flag")
	out, err := exec.Command(filepath.Join(c.Root, "bin", "busybox"), "uname", "-m").Output()
	if err != nil || strings.TrimSpace(string(out)) != "aarch64" {
		t.Errorf("uname -m in the arm64 image: %q, %v", out, err)
	}
}

// tarOf packs dir with the system tar (an independent producer).
func tarOf(t *testing.T, dir, compress string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "rootfs.tar")
	args := []string{"-C", dir, "-cf", out}
	if compress != "" {
		args = append(args, "--"+compress)
	}
	if b, err := exec.Command("tar", append(args, ".")...).CombinedOutput(); err != nil {
		t.Fatalf("tar: %v %s", err, b)
	}
	return out
}

func TestImportMethods(t *testing.T) {
	root := testsupport.BusyboxRootfs(t)
	testsupport.NeedCommand(t, "tar")
	e := newEnv(t)
	ctx := context.Background()
	for _, c := range []struct {
		name, method string
	}{
		{"tar-xz", "tar=" + tarOf(t, root, "xz")},
		{"tar-zstd", "tar=" + tarOf(t, root, "zstd")},
		{"dir", "dir=" + root},
	} {
		t.Run(c.name, func(t *testing.T) {
			var progress bytes.Buffer
			s, err := e.mgr.Create(ctx, images.CreateOptions{Name: c.name, Method: c.method, Progress: &progress})
			if err != nil {
				t.Fatalf("Create: %v", err)
			}
			if s.Arch != qemu.Native() || s.OS != "linux" {
				t.Errorf("detected arch/os %s/%s, want %s/linux", s.Arch, s.OS, qemu.Native())
			}
			cl, err := e.backend.Clone(ctx, s.Ref(), "run-"+c.name)
			if err != nil {
				t.Fatal(err)
			}
			if fi, err := os.Lstat(filepath.Join(cl.Root, "bin", "sh")); err != nil || fi.Mode()&fs.ModeSymlink == 0 {
				t.Errorf("bin/sh in the clone: %v, %v", fi, err)
			}
			if strings.HasPrefix(c.method, "tar=") && !strings.Contains(progress.String(), "extracted") {
				t.Errorf("no bytes-extracted progress: %q", progress.String())
			}
		})
	}
	t.Run("meter", func(t *testing.T) {
		// With a Meter (a bar on a terminal) the tarball's bytes read are
		// shown against its size, to the end, and the transfer ended once.
		file := tarOf(t, root, "zstd")
		fi, err := os.Stat(file)
		if err != nil {
			t.Fatal(err)
		}
		var desc string
		var total, last int64
		ends := 0
		meter := func(d string, tot int64) (func(int64), func()) {
			desc, total = d, tot
			return func(n int64) { last = n }, func() { ends++ }
		}
		if _, err := e.mgr.Create(ctx, images.CreateOptions{Name: "metered", Method: "tar=" + file, Meter: meter}); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(desc, filepath.Base(file)) || total != fi.Size() || last != fi.Size() || ends != 1 {
			t.Errorf("meter %q: total %d, last %d, ended %d times; want the file's %d bytes, ended once", desc, total, last, ends, fi.Size())
		}
	})
	t.Run("freebsd refused here", func(t *testing.T) {
		_, err := e.mgr.Create(ctx, images.CreateOptions{Name: "fb", Method: "freebsd", Version: "14.2-RELEASE"})
		if !errors.Is(err, errdefs.ErrUnsupported) || !strings.Contains(err.Error(), "FreeBSD") {
			t.Errorf("Create freebsd on Linux: %v", err)
		}
	})
	t.Run("failed build says which step and keeps the log", func(t *testing.T) {
		bad := filepath.Join(t.TempDir(), "bad.tar")
		os.WriteFile(bad, tarball(t, []*tar.Header{{Name: "../evil", Typeflag: tar.TypeReg}}, nil), 0o644)
		_, err := e.mgr.Create(ctx, images.CreateOptions{Name: "bad", Method: "tar=" + bad})
		var se *images.StepError
		if !errors.As(err, &se) || !strings.Contains(se.Step, "extract") || !errors.Is(err, errdefs.ErrInvalid) {
			t.Fatalf("Create of a hostile tarball: %v", err)
		}
		if log, rerr := os.ReadFile(se.Log); rerr != nil || !strings.Contains(string(log), "evil") {
			t.Errorf("log %s: %q, %v", se.Log, log, rerr)
		}
		if _, err := e.mgr.Resolve(ctx, "bad"); !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("failed image is listed: %v", err)
		}
	})
}

// childEnv makes the test binary run TestChildCreate as a build to kill.
const childEnv = "KILN_IMAGES_TEST_CHILD"

func TestMain(m *testing.M) {
	if spec := os.Getenv(childEnv); spec != "" {
		childCreate(spec)
	}
	os.Exit(m.Run())
}

// childCreate is the build TestKilledCreate runs in a child process (the
// test binary again) and SIGKILLs mid-extraction. It never returns.
func childCreate(spec string) {
	f := strings.Split(spec, ",") // kind, storage dir, metadata dir, fifo
	var b sandbox.Backend
	var err error
	switch f[0] {
	case "btrfs":
		b, err = treestore.NewBtrfs(f[1])
	default:
		b, err = treestore.NewOverlay(f[1])
	}
	dir, fifo := f[2], f[3]
	if err != nil {
		fmt.Println(err)
		os.Exit(2)
	}
	m := images.NewManager(b, filepath.Join(dir, "images"), images.Options{})
	_, err = m.Create(context.Background(), images.CreateOptions{Name: "victim", Method: "tar=" + fifo})
	fmt.Println("Create returned (it should have been killed):", err)
	os.Exit(3)
}

func TestKilledCreate(t *testing.T) {
	for _, kind := range []string{"overlay", "btrfs"} {
		t.Run(kind, func(t *testing.T) { testKilledCreate(t, kind) })
	}
}

func testKilledCreate(t *testing.T, kind string) {
	e := newEnvOn(t, kind)
	ctx := context.Background()
	fifo := filepath.Join(e.dir, "rootfs.tar")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), childEnv+"="+strings.Join([]string{kind, e.storage, e.dir, fifo}, ","))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	w, err := os.OpenFile(fifo, os.O_WRONLY, 0) // returns once the child reads
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	// One complete file, then the header and part of a second one: the
	// child writes the first and blocks in the middle of the second.
	marker := bytes.Repeat([]byte("k"), 1<<20)
	tw := tar.NewWriter(w)
	tw.WriteHeader(&tar.Header{Name: "kiln-marker", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(marker))})
	tw.Write(marker)
	tw.WriteHeader(&tar.Header{Name: "second", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1 << 20})
	tw.Write([]byte("partial"))
	tw.Flush()
	// Wait until the first file is complete in the build area.
	deadline := time.Now().Add(time.Minute)
	for findFile(t, e.storage, "kiln-marker") < int64(len(marker)) {
		if time.Now().After(deadline) {
			t.Fatalf("the child never extracted the first file; its output:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()

	e.reopen(t)
	if imgs, err := e.mgr.List(ctx); err != nil || len(imgs) != 0 {
		t.Fatalf("List after a killed create = %v, %v; want nothing", imgs, err)
	}
	if _, err := e.mgr.Resolve(ctx, "victim"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Resolve(victim) = %v, want ErrNotFound", err)
	}
	// The next create of the name gets the lock (the kernel dropped the
	// dead child's) and cleans the leftovers up first.
	root := testsupport.BusyboxRootfs(t)
	if _, err := e.mgr.Create(ctx, images.CreateOptions{Name: "victim", Method: "dir=" + root}); err != nil {
		t.Fatalf("Create after the kill: %v", err)
	}
	if n := findFile(t, e.storage, "kiln-marker"); n >= 0 {
		t.Errorf("the killed build's file is still in the storage (%d bytes)", n)
	}
}

// findFile returns the size of a file named name anywhere under dir, or -1.
func findFile(t *testing.T, dir, name string) int64 {
	size := int64(-1)
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Name() == name {
			if fi, err := d.Info(); err == nil {
				size = fi.Size()
			}
		}
		return nil
	})
	return size
}

func TestConcurrentCreateFailsOnLock(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	fifo := filepath.Join(e.dir, "rootfs.tar")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	first := make(chan error, 1)
	go func() {
		_, err := e.mgr.Create(ctx, images.CreateOptions{Name: "twice", Method: "tar=" + fifo, Arch: qemu.Native()})
		first <- err
	}()
	w, err := os.OpenFile(fifo, os.O_WRONLY, 0) // the first create holds the lock now
	if err != nil {
		t.Fatal(err)
	}
	other := images.NewManager(e.backend, filepath.Join(e.dir, "images"), images.Options{})
	_, err = other.Create(ctx, images.CreateOptions{Name: "twice", Method: "busybox"})
	if !errors.Is(err, errdefs.ErrBusy) || !strings.Contains(err.Error(), "pid "+strconv.Itoa(os.Getpid())) {
		t.Errorf("second Create = %v, want ErrBusy naming pid %d", err, os.Getpid())
	}
	tw := tar.NewWriter(w)
	tw.WriteHeader(&tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755})
	tw.Close()
	w.Close()
	if err := <-first; err != nil {
		t.Fatalf("first Create: %v", err)
	}
	if _, err := e.mgr.Resolve(ctx, "twice"); err != nil {
		t.Errorf("Resolve: %v", err)
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// TestDebootstrap builds real Debian minbase images: amd64 always (about a
// minute; needs Debian's mirror), arm64 through qemu-user only with
// KILN_LONG_TESTS=1 (about 3 minutes). The amd64 one is then updated with
// apt-get in a containerd sandbox while a clone of the first snapshot stays.
func TestDebootstrap(t *testing.T) {
	testsupport.NeedCommand(t, "debootstrap")
	for _, c := range []struct {
		arch   string
		long   bool
		update bool
	}{
		{arch: "amd64", update: true},
		{arch: "arm64", long: true},
	} {
		t.Run(c.arch, func(t *testing.T) {
			if c.long && os.Getenv("KILN_LONG_TESTS") != "1" {
				t.Skip("long test: set KILN_LONG_TESTS=1")
			}
			if c.arch != qemu.Native() {
				caps, err := qemu.Detect(context.Background())
				testsupport.Need(t, err == nil && caps.Runnable(c.arch), "a binfmt_misc handler with the F flag for "+c.arch)
			}
			e := newEnv(t)
			ctx := context.Background()
			var progress bytes.Buffer
			s, err := e.mgr.Create(ctx, images.CreateOptions{Name: "deb-" + c.arch, Method: "debootstrap", Arch: c.arch,
				Packages: []string{"less"}, Progress: &progress})
			if err != nil {
				t.Fatalf("Create: %v\nprogress:\n%s", err, progress.String())
			}
			for _, want := range []string{"debootstrap: Base system installed successfully.", "packages"} {
				if !strings.Contains(progress.String(), want) {
					t.Errorf("progress lacks %q:\n%s", want, progress.String())
				}
			}
			if s.Arch != c.arch || s.MethodVersion != "bookworm" || fmt.Sprint(s.Packages) != "[less]" {
				t.Errorf("metadata: %+v", s)
			}
			old, err := e.backend.Clone(ctx, s.Ref(), "run-deb-old")
			if err != nil {
				t.Fatal(err)
			}
			status, err := os.ReadFile(filepath.Join(old.Root, "var/lib/dpkg/status"))
			if err != nil || !strings.Contains(string(status), "Package: less\n") || !strings.Contains(string(status), "Package: apt\n") {
				t.Fatalf("dpkg status of the image lacks apt or less: %v", err)
			}
			if _, err := os.Stat(filepath.Join(old.Root, "debootstrap")); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("/debootstrap left in the image: %v", err)
			}
			if !c.update {
				return
			}
			addr := testsupport.StartContainerd(t)
			// The update reaches the mirror through a bridge sandbox.
			l, err := linux.NewContainerd(ctx, linux.ContainerdConfig{Address: addr, Namespace: "kiln-images-test", Network: testsupport.Network(t)})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { l.Close() })
			if err := os.WriteFile(filepath.Join(old.Root, "root", "mine"), []byte("kept"), 0o644); err != nil {
				t.Fatal(err)
			}
			progress.Reset()
			s2, err := e.mgr.UpdateWith(ctx, images.UpdateOptions{Name: s.Name, Launcher: l, Progress: &progress})
			if err != nil {
				t.Fatalf("Update: %v\nprogress:\n%s", err, progress.String())
			}
			if s2.Parent != s.Version || s2.Version <= s.Version {
				t.Errorf("update: %s with parent %q after %s", s2.Version, s2.Parent, s.Version)
			}
			if !strings.Contains(progress.String(), "upgraded, ") {
				t.Errorf("update progress lacks apt's summary:\n%s", progress.String())
			}
			if got, err := os.ReadFile(filepath.Join(old.Root, "root", "mine")); err != nil || string(got) != "kept" {
				t.Errorf("the old clone changed: %q, %v", got, err)
			}
			nc, err := e.backend.Clone(ctx, s2.Ref(), "run-deb-new")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(filepath.Join(nc.Root, "root", "mine")); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("a file of the old run's clone is in the new snapshot: %v", err)
			}
			lists, _ := os.ReadDir(filepath.Join(nc.Root, "var/lib/apt/lists"))
			if len(lists) < 2 { // apt-get update fetched indexes ("partial" and "lock" alone otherwise)
				t.Errorf("var/lib/apt/lists of the updated snapshot: %d entries", len(lists))
			}
		})
	}
}

// A worker holds an image from resolving a run's image until its clone
// exists: delete and prune are refused meanwhile, then see the clone.
func TestHoldKeepsChangersOut(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	snap, err := e.mgr.Create(ctx, images.CreateOptions{Name: "held", Method: "busybox"})
	if err != nil {
		t.Fatal(err)
	}
	release := e.mgr.Hold("held")
	if err := e.mgr.Delete(ctx, "held", false); !errors.Is(err, errdefs.ErrBusy) {
		t.Fatalf("Delete while held = %v, want ErrBusy", err)
	}
	if _, err := e.backend.Clone(ctx, snap.Ref(), "r1"); err != nil {
		t.Fatal(err)
	}
	release()
	release() // harmless
	if err := e.mgr.Delete(ctx, "held", false); !errors.Is(err, errdefs.ErrBusy) || !strings.Contains(err.Error(), "r1") {
		t.Fatalf("Delete with a clone = %v, want ErrBusy naming run r1", err)
	}
	if err := e.backend.Destroy(ctx, "r1"); err != nil {
		t.Fatal(err)
	}
	if err := e.mgr.Delete(ctx, "held", false); err != nil {
		t.Fatalf("Delete once released and unused: %v", err)
	}
	// Holding what does not exist, or a bad name, holds nothing.
	e.mgr.Hold("nothing")()
	e.mgr.Hold("../x")()
}
