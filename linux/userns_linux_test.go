package linux

import (
	"context"
	"errors"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/internal/idmap"
	"github.com/kiln-build/kiln/internal/mounts"
	"github.com/kiln-build/kiln/internal/testsupport"
	"github.com/kiln-build/kiln/sandbox"
)

// TestUsernsKeptPerRange: a range's user namespace is made once and kept
// for the runs that take the range later (no process of kiln's own per
// run); closing the launcher lets go of them all.
func TestUsernsKeptPerRange(t *testing.T) {
	c, _ := newLauncher(t)
	bases := map[uint32]bool{}
	for range 3 {
		spec, console := shSpec(t, "true")
		sb := start(t, c, spec)
		if exit := wait(t, sb); exit.Code != 0 {
			t.Fatalf("exit %+v; console:\n%s", exit, console)
		}
		bases[usernsOf(labelsThenDelete(t, c, sb))] = true
	}
	// Other processes on the host take ranges too, so the runs need not
	// all have had the same one. That a kept namespace is handed out
	// again is idmap's TestNamespaces.
	kept := c.nsFiles.Kept()
	slices.Sort(kept)
	if want := slices.Sorted(maps.Keys(bases)); !slices.Equal(kept, want) {
		t.Fatalf("user namespaces kept for ranges %v, want the ranges used, %v", kept, want)
	}
	c.nsFiles.Close() // what Close does
	if kept := c.nsFiles.Kept(); len(kept) != 0 {
		t.Fatalf("user namespaces still kept after close: %v", kept)
	}
}

// TestRemoveIDMaps: everything mounted in an idmap directory, stacked
// mounts and a cache layer's directory included, is detached and the
// directory removed, without a read of the mount table; a file below a
// mount is never deleted through it.
func TestRemoveIDMaps(t *testing.T) {
	testsupport.NeedRoot(t)
	dir := filepath.Join(t.TempDir(), "idmaps")
	keep := t.TempDir() // bind-mounted in: must survive
	if err := os.WriteFile(filepath.Join(keep, "data"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"0", "1", "m2/root", "m2/l0"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	mount := func(src, dst string) {
		t.Helper()
		if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _ = mounts.UnmountBelow(dir) })
	mount(keep, filepath.Join(dir, "0"))
	mount(keep, filepath.Join(dir, "0")) // stacked
	mount(keep, filepath.Join(dir, "m2", "root"))
	if err := unix.Mount("tmpfs", filepath.Join(dir, "m2", "l0"), "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	if err := removeIDMaps(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("%s left: %v", dir, err)
	}
	if mps, err := mounts.Below(filepath.Dir(dir)); err != nil || len(mps) != 0 {
		t.Fatalf("mounts left: %v %v", mps, err)
	}
	if _, err := os.Stat(filepath.Join(keep, "data")); err != nil {
		t.Fatalf("a file below a mount was deleted: %v", err)
	}
	if err := removeIDMaps(dir); err != nil {
		t.Fatalf("again: %v", err)
	}
}

// TestStatOverlay: overlayMounts finds the overlay among other paths
// (an overlay's subdirectory, a plain directory) with the layers the mount
// table shows, and where statmount answers, it says the others are no
// overlay roots.
func TestStatOverlay(t *testing.T) {
	testsupport.NeedRoot(t)
	merged := testsupport.OverlayOf(t, testsupport.BusyboxRootfs(t))
	plain := t.TempDir()
	got, err := overlayMounts([]string{plain, merged, filepath.Join(merged, "bin")})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[merged] == nil {
		t.Fatalf("overlayMounts: %v, want only %s", got, merged)
	}
	ms, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(merged))
	if err != nil || len(ms) != 1 {
		t.Fatalf("mount table at %s: %v %v", merged, ms, err)
	}
	lw, err := idmap.LayersOf(ms[0])
	if err != nil {
		t.Fatal(err)
	}
	lg, err := idmap.LayersOf(got[merged])
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(lg.Lower, lw.Lower) || lg.Upper != lw.Upper || lg.Work != lw.Work {
		t.Fatalf("layers %+v, mount table %+v", lg, lw)
	}
	if _, known, err := statOverlay(merged); err != nil || !known {
		// The mount table answered above.
		t.Logf("statmount with mount options needs kernel 6.11+: %v", err)
		return
	}
	for _, p := range []string{filepath.Join(merged, "bin"), plain} {
		if m, known, err := statOverlay(p); err != nil || !known || m != nil {
			t.Errorf("statOverlay(%s) = %v, %v, %v; want no overlay", p, m, known, err)
		}
	}
}

// TestSandboxOverlayLayers: a sandbox on an overlay clone sees the image's
// owners and writes files the host stores as its own, both over detached
// layers (kernel 6.15+; the launcher finds out) and over attached ones
// (the older kernels' way, forced here); with detached layers, a range
// keeps its latest run's lower layer and drops an older image's.
func TestSandboxOverlayLayers(t *testing.T) {
	rootfs := testsupport.BusyboxRootfs(t)
	for _, tt := range []struct {
		name string
		mode int
	}{{"auto", detachedUnknown}, {"attached", detachedNo}} {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := newLauncher(t)
			c.layers.detached = tt.mode
			var lastBase uint32
			var lastLower string
			for i := range 2 {
				root := testsupport.OverlayOf(t, rootfs) // a new "image version" each time
				ms, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(root))
				if err != nil || len(ms) != 1 {
					t.Fatalf("mount at %s: %v %v", root, ms, err)
				}
				l, err := idmap.LayersOf(ms[0])
				if err != nil {
					t.Fatal(err)
				}
				spec, console := shSpec(t, "stat -c bin=%u:%g /bin/busybox; echo hi >/made; mkdir /d && mv /d /bin/d2 && echo moved=ok")
				spec.Root, spec.Cwd = root, "/"
				sb := start(t, c, spec)
				if exit := wait(t, sb); exit.Code != 0 {
					t.Fatalf("run %d: exit %+v; console:\n%s", i, exit, console)
				}
				if out := console.String(); !strings.Contains(out, "bin=0:0") || !strings.Contains(out, "moved=ok") {
					t.Fatalf("run %d: console:\n%s", i, out)
				}
				labels := labelsThenDelete(t, c, sb)
				// Removed with the idmapped mounts, not left to the
				// clone's destroy; the clone's own stays.
				if _, err := os.Lstat(l.WorkDir(sandboxTag)); !errors.Is(err, fs.ErrNotExist) {
					t.Fatalf("run %d: the sandbox overlay's work dir outlived the delete: %v", i, err)
				}
				if _, err := os.Lstat(l.Work); err != nil {
					t.Fatalf("run %d: the clone's work dir: %v", i, err)
				}
				var st unix.Stat_t
				if err := unix.Lstat(filepath.Join(l.Upper, "made"), &st); err != nil || st.Uid != 0 {
					t.Fatalf("run %d: /made in the clone's upper: uid %d, %v; want host uid 0", i, st.Uid, err)
				}
				lastBase, lastLower = usernsOf(labels), l.Lower[0]
			}
			c.layers.mu.Lock()
			defer c.layers.mu.Unlock()
			t.Logf("detached layers: %v", c.layers.detached == detachedYes)
			switch c.layers.detached {
			case detachedYes:
				kept := c.layers.kept[lastBase]
				if len(kept) != 1 || kept[lastLower] == nil {
					t.Fatalf("range %d keeps %v, want only the latest run's lower %s", lastBase, slices.Collect(maps.Keys(kept)), lastLower)
				}
			case detachedNo:
				if n := len(c.layers.kept); n != 0 {
					t.Fatalf("%d ranges keep detached layers with attached ones in use", n)
				}
			default:
				t.Fatal("the launcher never found out whether detached layers work")
			}
			if tt.mode == detachedNo && c.layers.detached != detachedNo {
				t.Fatal("attached layers were not kept to")
			}
		})
	}
}

// TestIDRangesStale: a range record no start holds and whose container's
// idmapped mounts are gone is stale whoever's it is (a data dir gone for
// good): StaleRanges lists it, FreeStaleRange and the next acquire drop it.
// A record with its mounts, or held by a start in progress, stays.
func TestIDRangesStale(t *testing.T) {
	tmp := t.TempDir()
	mine := newIDRanges(filepath.Join(tmp, "userns"), filepath.Join(tmp, "idmap"), "/run/c.sock", "kiln", "me")
	gone := mine.of("gone")
	if err := os.Mkdir(mine.idmaps, 0o711); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	allAlive := func(context.Context) (map[string]bool, error) {
		return map[string]bool{"kiln-mounted": true, "kiln-starting": true, "kiln-dead": true}, nil
	}
	take := func(r idRanges, ctr string) (int, *os.File) {
		t.Helper()
		base, hold, err := r.acquire(ctx, ctr, allAlive)
		if err != nil {
			t.Fatal(err)
		}
		return int((base - usernsBase) / usernsSize), hold
	}
	// In this order: each acquire drops the stale records before it.
	mounted, hold := take(gone, "kiln-mounted")
	if err := os.Mkdir(gone.idmapsOf(gone.owner, "kiln-mounted"), 0o711); err != nil {
		t.Fatal(err)
	}
	hold.Close()
	starting, hold := take(gone, "kiln-starting")
	defer hold.Close()
	dead, hold := take(gone, "kiln-dead")
	hold.Close()

	c := &Containerd{ranges: mine}
	stale, err := c.StaleRanges()
	if err != nil {
		t.Fatal(err)
	}
	if len(stale) != 1 || stale[0] != (StaleRange{Range: dead, Owner: "gone", Container: "kiln-dead"}) {
		t.Fatalf("StaleRanges = %+v, want only range %d of kiln-dead", stale, dead)
	}
	for _, n := range []int{mounted, starting} {
		if err := c.FreeStaleRange(n); err != nil {
			t.Fatal(err)
		}
	}
	record := func(n int) string {
		b, _ := os.ReadFile(filepath.Join(mine.dir, strconv.Itoa(n)))
		return string(b)
	}
	for _, tt := range []struct {
		n   int
		ctr string
	}{{mounted, "kiln-mounted"}, {starting, "kiln-starting"}} {
		if !strings.Contains(record(tt.n), tt.ctr) {
			t.Errorf("record %d of %s was freed: %q", tt.n, tt.ctr, record(tt.n))
		}
	}

	t.Run("acquire takes it back", func(t *testing.T) {
		n, hold := take(mine, "kiln-new")
		defer hold.Close()
		if n != dead {
			t.Errorf("acquire took range %d, want %d (the stale one)", n, dead)
		}
	})
	t.Run("FreeStaleRange removes it", func(t *testing.T) {
		n, hold := take(gone, "kiln-dead2")
		hold.Close()
		if err := c.FreeStaleRange(n); err != nil {
			t.Fatal(err)
		}
		if r := record(n); r != "" {
			t.Errorf("record %d left: %q", n, r)
		}
	})
	t.Run("release goes by the container's owner", func(t *testing.T) {
		n, hold := take(gone, "kiln-other")
		hold.Close()
		if err := os.Mkdir(gone.idmapsOf(gone.owner, "kiln-other"), 0o711); err != nil {
			t.Fatal(err)
		}
		base := usernsBase + uint32(n)*usernsSize
		mine.release(base, "kiln-other")
		if record(n) == "" {
			t.Fatal("released another owner's record as its own")
		}
		mine.of("gone").release(base, "kiln-other")
		if r := record(n); r != "" {
			t.Errorf("record %d left: %q", n, r)
		}
	})
}

// labelsThenDelete returns the labels of sb's container, then deletes sb.
func labelsThenDelete(t *testing.T, c *Containerd, sb sandbox.Sandbox) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	labels, err := sb.(*containerdSandbox).ctr.Labels(c.nsCtx(ctx))
	if err == nil {
		err = sb.Delete(ctx)
	}
	if err != nil {
		t.Fatal(err)
	}
	return labels
}

// asNobody runs name with args as host uid and gid 65534, no other groups:
// a local user of the host who is not root.
func asNobody(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestSandboxRootPrivate: while a container-tier sandbox runs, a host user
// other than root can neither list nor read its root or its /out through
// their idmapped copies under /run/kiln/idmap, nor find a file of the
// sandbox's anywhere under /run, whether the root is a plain directory or
// an overlay clone.
func TestSandboxRootPrivate(t *testing.T) {
	testsupport.NeedCommand(t, "find")
	c, _ := newLauncher(t)
	for _, kind := range []string{"dir", "overlay"} {
		t.Run(kind, func(t *testing.T) {
			marker := "secret-" + runID(t)
			spec, console := shSpec(t, "echo s3cret >/"+marker+" && echo s3cret >/out/"+marker+" && echo ready && exec sleep 1000")
			if kind == "overlay" {
				spec.Root = testsupport.OverlayOf(t, spec.Root)
			}
			spec.Cwd = "/"
			out := filepath.Join(t.TempDir(), "out")
			if err := os.Mkdir(out, 0o755); err != nil {
				t.Fatal(err)
			}
			spec.Mounts = []sandbox.Mount{{Source: out, Target: "/out"}}
			sb := start(t, c, spec)
			waitFor(t, console, "ready")
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			labels, err := sb.(*containerdSandbox).ctr.Labels(c.nsCtx(ctx))
			if err != nil {
				t.Fatal(err)
			}
			dir := labels[LabelIDMaps]
			if dir == "" {
				t.Fatalf("no idmapped mounts recorded: %v", labels)
			}
			// Root reads them: the probes below fail for want of access,
			// not because the paths are wrong.
			for _, p := range []string{filepath.Join(dir, "0", marker), filepath.Join(dir, "1", marker)} {
				if b, err := os.ReadFile(p); err != nil || strings.TrimSpace(string(b)) != "s3cret" {
					t.Fatalf("root cannot read %s: %q %v", p, b, err)
				}
			}
			for _, probe := range [][]string{
				{"ls", "-a", dir},
				{"ls", "-a", filepath.Join(dir, "0")},
				{"ls", "-a", filepath.Join(dir, "1")},
				{"cat", filepath.Join(dir, "0", marker)},
				{"cat", filepath.Join(dir, "1", marker)},
			} {
				if got, err := asNobody(probe[0], probe[1:]...); err == nil {
					t.Errorf("a host user other than root ran %q:\n%s", probe, got)
				}
			}
			found, _ := asNobody("find", "/run", "-name", marker)
			if strings.Contains(found, marker) {
				t.Errorf("a host user other than root finds the sandbox's files under /run:\n%s", found)
			}
		})
	}
}
