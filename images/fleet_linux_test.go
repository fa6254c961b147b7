package images_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/images"
)

// fleetVersion packs a small tree whose /etc/version says n and returns
// the compressed blob with its manifest as version n of name.
func fleetVersion(t *testing.T, e *env, name string, n int) ([]byte, images.FleetVersion) {
	t.Helper()
	src := t.TempDir()
	order := treeOrder
	if e.storage == "" {
		// zfs-fuse keeps no user xattrs: leave out the file that has one.
		order = slices.DeleteFunc(slices.Clone(order), func(n string) bool { return n == "home/u/f" })
	}
	makeTree(t, src, order)
	if err := os.WriteFile(filepath.Join(src, "etc/version"), []byte(strings.Repeat("v", n)), 0o644); err != nil {
		t.Fatal(err)
	}
	z, st := pack(t, src)
	return z, images.FleetVersion{Name: name, Version: n, Arch: "amd64", OS: "linux", Method: "busybox",
		TarDigest: st.TarDigest, TarSize: st.TarSize}
}

func TestFleetImport(t *testing.T) {
	for _, kind := range backends {
		t.Run(kind, func(t *testing.T) { testFleetImport(t, newEnvOn(t, kind)) })
	}
}

func testFleetImport(t *testing.T, e *env) {
	ctx := context.Background()
	// A host-local image of the same name keeps working beside the fleet's.
	if _, err := e.mgr.Create(ctx, images.CreateOptions{Name: "base", Method: "dir=" + mkdirTree(t), Arch: "amd64"}); err != nil {
		t.Fatal(err)
	}
	z, v := fleetVersion(t, e, "base", 1)
	if _, ok, err := e.mgr.FindFleet(ctx, v); err != nil || ok {
		t.Fatalf("FindFleet before import: %v %v", ok, err)
	}
	snap, st, err := e.mgr.ImportFleet(ctx, v, bytes.NewReader(z), images.ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if snap.Name == "base" || snap.TarDigest != v.TarDigest || snap.Fleet != "base@1" || st.TarBytes != v.TarSize {
		t.Fatalf("imported %+v (%+v)", snap, st)
	}
	local, err := e.mgr.Resolve(ctx, "base")
	if err != nil || local.Method != "dir" {
		t.Fatalf("the local image base after the import: %+v %v", local, err)
	}
	// Found again by a new process; importing again is a no-op.
	e.reopen(t)
	got, ok, err := e.mgr.FindFleet(ctx, v)
	if err != nil || !ok || got.Ref() != snap.Ref() {
		t.Fatalf("FindFleet after import: %+v %v %v", got, ok, err)
	}
	again, _, err := e.mgr.ImportFleet(ctx, v, bytes.NewReader(nil), images.ImportOptions{})
	if err != nil || again.Ref() != snap.Ref() {
		t.Fatalf("second import: %+v %v", again, err)
	}
	// The snapshot clones like any other, with the tree that was packed.
	c, err := e.backend.Clone(ctx, snap.Ref(), "fleet-run")
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(c.Root, "etc/version")); err != nil || string(b) != "v" {
		t.Fatalf("clone's etc/version: %q %v", b, err)
	}
	if err := e.backend.Destroy(ctx, "fleet-run"); err != nil {
		t.Fatal(err)
	}

	// A stream that does not match its manifest leaves no snapshot and no
	// build area.
	z2, v2 := fleetVersion(t, e, "base", 2)
	bad := v2
	bad.TarDigest = v.TarDigest
	if _, _, err := e.mgr.ImportFleet(ctx, bad, bytes.NewReader(z2), images.ImportOptions{}); !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "discarded") {
		t.Fatalf("import of a mismatching stream: %v", err)
	}
	if _, ok, _ := e.mgr.FindFleet(ctx, bad); ok {
		t.Fatal("a refused import left a snapshot")
	}
	if e.storage != "" {
		if left := leftoverBuilds(t, e.storage); len(left) > 0 {
			t.Fatalf("a refused import left build areas: %v", left)
		}
	}

	// keep: versions past the newest keep go, except one a clone uses and
	// one protect names.
	for n := 2; n <= 5; n++ {
		zn, vn := fleetVersion(t, e, "base", n)
		if _, _, err := e.mgr.ImportFleet(ctx, vn, bytes.NewReader(zn), images.ImportOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	all, err := e.mgr.FleetSnapshots(ctx)
	if err != nil || len(all) != 5 {
		t.Fatalf("fleet snapshots: %d %v", len(all), err)
	}
	byFleet := map[string]images.Snapshot{}
	for _, s := range all {
		byFleet[s.Fleet] = s
	}
	if _, err := e.backend.Clone(ctx, byFleet["base@1"].Ref(), "uses-1"); err != nil {
		t.Fatal(err)
	}
	protect := func(s images.Snapshot) bool { return s.Fleet == "base@2" }
	// A run holding the image keeps the prune out entirely.
	release := e.mgr.Hold(images.FleetImageName("base"))
	if err := e.mgr.PruneFleet(ctx, "base", 2, protect); err != nil {
		t.Fatal(err)
	}
	if all, _ := e.mgr.FleetSnapshots(ctx); len(all) != 5 {
		t.Fatalf("a prune while a run holds the image removed versions: %d left", len(all))
	}
	release()
	if err := e.mgr.PruneFleet(ctx, "base", 2, protect); err != nil {
		t.Fatal(err)
	}
	var left []string
	all, _ = e.mgr.FleetSnapshots(ctx)
	for _, s := range all {
		left = append(left, s.Fleet)
	}
	if strings.Join(left, " ") != "base@1 base@2 base@4 base@5" {
		t.Fatalf("after prune with keep 2: %v, want base@1 (cloned) base@2 (protected) base@4 base@5", left)
	}
	if _, err := e.mgr.Resolve(ctx, "base"); err != nil {
		t.Fatalf("the local image after the prune: %v", err)
	}
}

// mkdirTree is a tiny tree for a dir= image.
func mkdirTree(t *testing.T) string {
	t.Helper()
	d := t.TempDir()
	if err := os.MkdirAll(filepath.Join(d, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d, "bin/true"), []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

// leftoverBuilds lists the build areas (directories) under a tree store.
func leftoverBuilds(t *testing.T, storage string) []string {
	t.Helper()
	ents, _ := os.ReadDir(filepath.Join(storage, "builds"))
	var out []string
	for _, e := range ents {
		if e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out
}

func TestCreateRefusesFleetPrefix(t *testing.T) {
	e := newEnv(t)
	_, err := e.mgr.Create(context.Background(), images.CreateOptions{Name: "fleet.x", Method: "dir=" + mkdirTree(t), Arch: "amd64"})
	if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "fleet.") {
		t.Fatalf("err = %v", err)
	}
}

func TestFleetImageNameBounded(t *testing.T) {
	long := strings.Repeat("a", 63)
	other := strings.Repeat("a", 62) + "b"
	a, b := images.FleetImageName(long), images.FleetImageName(other)
	if len(a) > 63 || a == b || !strings.HasPrefix(a, images.FleetPrefix) {
		t.Fatalf("%s / %s", a, b)
	}
	if images.FleetImageName("bookworm") != "fleet.bookworm" {
		t.Fatal(images.FleetImageName("bookworm"))
	}
}
