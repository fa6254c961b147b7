// Package storagetest is the contract test of sandbox.Backend: every
// storage backend (overlay, btrfs, ZFS) runs the same suite against a real
// instance, the way containerd's snapshots/testsuite checks snapshotters.
//
// The suite needs root (it makes device nodes and chowns files) and
// whatever the backend needs to mount its clones.
package storagetest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"testing"

	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/sandbox"
)

// Abandoner is implemented by backends whose builds are kept alive by the
// process that began them (a lock it holds). Abandon drops this process's
// hold on build b without removing its area - what the death of the
// building process does - so the suite can check that Leftovers removes
// dead builds. Every backend tested by Run must implement it.
type Abandoner interface {
	Abandon(b sandbox.Build) error
}

// Run checks every point of the sandbox.Storage and sandbox.ImageStore
// contracts. newBackend is called once per subtest and must return a
// backend on fresh, empty storage; it registers its own cleanup on t.
func Run(t *testing.T, newBackend func(t *testing.T) sandbox.Backend) {
	tests := []struct {
		name string
		fn   func(t *testing.T, b sandbox.Backend)
	}{
		{"BadNames", testBadNames},
		{"NotFound", testNotFound},
		{"CommitAndList", testCommitAndList},
		{"AbortedAndOpenBuildsAreNotListed", testUncommitted},
		{"CommitTwice", testCommitTwice},
		{"BeginWithParent", testBeginWithParent},
		{"CloneIsolation", testCloneIsolation},
		{"CloneIdempotent", testCloneIdempotent},
		{"CloneNoSuidNoDev", testCloneNoSuidNoDev},
		{"DestroyIdempotent", testDestroyIdempotent},
		{"ListExactlyLiveClones", testList},
		{"DeleteSnapshot", testDeleteSnapshot},
		{"Leftovers", testLeftovers},
		{"ConcurrentClones", testConcurrentClones},
		{"MetadataSurvives", testMetadata},
		{"DiskLimit", testDiskLimit},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := newBackend(t)
			t.Cleanup(func() { destroyAll(t, b) })
			tc.fn(t, b)
		})
	}
}

// destroyAll removes the clones a failed test left, so the backend's own
// cleanup (unmounting a loop device, destroying a pool) is not blocked.
func destroyAll(t *testing.T, b sandbox.Backend) {
	ctx := context.Background()
	cs, err := b.List(ctx)
	if err != nil {
		t.Errorf("cleanup: List: %v", err)
		return
	}
	for _, c := range cs {
		if err := b.Destroy(ctx, c.RunID); err != nil {
			t.Errorf("cleanup: Destroy(%s): %v", c.RunID, err)
		}
	}
}

// commit builds image@version holding files (path -> content) on top of
// parent ("" for none).
func commit(t *testing.T, b sandbox.Backend, image, parent, version string, files map[string]string) sandbox.SnapshotInfo {
	t.Helper()
	ctx := t.Context()
	bd, err := b.Begin(ctx, image, parent)
	if err != nil {
		t.Fatalf("Begin(%s, %q): %v", image, parent, err)
	}
	writeFiles(t, bd.Root, files)
	si, err := b.Commit(ctx, bd, version)
	if err != nil {
		t.Fatalf("Commit(%s@%s): %v", image, version, err)
	}
	return si
}

func writeFiles(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for p, content := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func wantFile(t *testing.T, root, p, want string) {
	t.Helper()
	got, err := os.ReadFile(filepath.Join(root, p))
	if err != nil {
		t.Errorf("read %s: %v", p, err)
		return
	}
	if string(got) != want {
		t.Errorf("%s = %q, want %q", p, got, want)
	}
}

func wantNoFile(t *testing.T, root, p string) {
	t.Helper()
	if _, err := os.Lstat(filepath.Join(root, p)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s: want it absent, Lstat says %v", p, err)
	}
}

func wantErr(t *testing.T, what string, err, kind error) {
	t.Helper()
	if !errors.Is(err, kind) {
		t.Errorf("%s: got error %v, want %v", what, err, kind)
	}
}

func runIDs(t *testing.T, b sandbox.Backend) []string {
	t.Helper()
	cs, err := b.List(t.Context())
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	var ids []string
	for _, c := range cs {
		ids = append(ids, c.RunID)
	}
	sort.Strings(ids)
	return ids
}

func testBadNames(t *testing.T, b sandbox.Backend) {
	ctx := t.Context()
	commit(t, b, "img", "", "v1", map[string]string{"f": "x"})
	bd, err := b.Begin(ctx, "img", "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Abort(context.Background(), bd) })
	for _, bad := range []string{"a/b", "..", "a..b", "/abs", ""} {
		t.Run(fmt.Sprintf("%q", bad), func(t *testing.T) {
			_, err := b.Begin(ctx, bad, "")
			wantErr(t, "Begin image", err, errdefs.ErrInvalid)
			_, err = b.Begin(ctx, "img", bad+"x/y")
			wantErr(t, "Begin parent", err, errdefs.ErrInvalid)
			_, err = b.Clone(ctx, bad+"@v1", "run1")
			wantErr(t, "Clone image", err, errdefs.ErrInvalid)
			_, err = b.Clone(ctx, "img@"+bad, "run1")
			wantErr(t, "Clone version", err, errdefs.ErrInvalid)
			_, err = b.Clone(ctx, "img@v1", bad)
			wantErr(t, "Clone runID", err, errdefs.ErrInvalid)
			wantErr(t, "Destroy", b.Destroy(ctx, bad), errdefs.ErrInvalid)
			_, err = b.Commit(ctx, bd, bad)
			wantErr(t, "Commit version", err, errdefs.ErrInvalid)
			_, err = b.Snapshots(ctx, bad)
			wantErr(t, "Snapshots", err, errdefs.ErrInvalid)
			wantErr(t, "DeleteSnapshot image", b.DeleteSnapshot(ctx, bad, "v1"), errdefs.ErrInvalid)
			wantErr(t, "DeleteSnapshot version", b.DeleteSnapshot(ctx, "img", bad), errdefs.ErrInvalid)
		})
	}
	_, err = b.Clone(ctx, "img", "run1")
	wantErr(t, "Clone without @version", err, errdefs.ErrInvalid)
	// The build survived the bad calls and still commits.
	if _, err := b.Commit(ctx, bd, "v2"); err != nil {
		t.Errorf("Commit after bad names: %v", err)
	}
	if got := runIDs(t, b); len(got) != 0 {
		t.Errorf("List after bad names = %v, want none", got)
	}
}

func testNotFound(t *testing.T, b sandbox.Backend) {
	ctx := t.Context()
	_, err := b.Clone(ctx, "nope@v1", "run1")
	wantErr(t, "Clone of unknown image", err, errdefs.ErrNotFound)
	_, err = b.Begin(ctx, "nope", "v1")
	wantErr(t, "Begin on unknown parent", err, errdefs.ErrNotFound)
	_, err = b.Snapshots(ctx, "nope")
	wantErr(t, "Snapshots of unknown image", err, errdefs.ErrNotFound)
	commit(t, b, "img", "", "v1", nil)
	_, err = b.Clone(ctx, "img@v2", "run1")
	wantErr(t, "Clone of unknown version", err, errdefs.ErrNotFound)
	_, err = b.Begin(ctx, "img", "v2")
	wantErr(t, "Begin on unknown version", err, errdefs.ErrNotFound)
	if err := b.DeleteSnapshot(ctx, "nope", "v1"); err != nil {
		t.Errorf("DeleteSnapshot of unknown snapshot: %v, want nil", err)
	}
	if got := runIDs(t, b); len(got) != 0 {
		t.Errorf("List after failed clones = %v, want none", got)
	}
}

func testCommitAndList(t *testing.T, b sandbox.Backend) {
	ctx := t.Context()
	if imgs, err := b.Images(ctx); err != nil || len(imgs) != 0 {
		t.Fatalf("Images on empty storage = %v, %v; want none", imgs, err)
	}
	// Versions are committed out of name order: listing follows commits.
	si := commit(t, b, "img", "", "v2", map[string]string{"a": "1"})
	if si.Image != "img" || si.Version != "v2" || si.Ref() != "img@v2" || si.Created.IsZero() {
		t.Errorf("Commit returned %+v", si)
	}
	commit(t, b, "img", "v2", "v1", map[string]string{"b": "2"})
	commit(t, b, "img", "v1", "v3", nil)
	commit(t, b, "other", "", "v1", nil)
	imgs, err := b.Images(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(imgs)
	if !slices.Equal(imgs, []string{"img", "other"}) {
		t.Errorf("Images = %v, want [img other]", imgs)
	}
	snaps, err := b.Snapshots(ctx, "img")
	if err != nil {
		t.Fatal(err)
	}
	var vs []string
	for _, s := range snaps {
		vs = append(vs, s.Version)
		if s.Image != "img" {
			t.Errorf("snapshot %+v has the wrong image", s)
		}
	}
	if !slices.Equal(vs, []string{"v2", "v1", "v3"}) {
		t.Errorf("Snapshots(img) = %v, want commit order [v2 v1 v3]", vs)
	}
	for i := 1; i < len(snaps); i++ {
		if snaps[i].Created.Before(snaps[i-1].Created) {
			t.Errorf("Snapshots not oldest first: %v", snaps)
		}
	}
}

func testUncommitted(t *testing.T, b sandbox.Backend) {
	ctx := t.Context()
	aborted, err := b.Begin(ctx, "aborted", "")
	if err != nil {
		t.Fatal(err)
	}
	writeFiles(t, aborted.Root, map[string]string{"f": "x"})
	if err := b.Abort(ctx, aborted); err != nil {
		t.Fatalf("Abort: %v", err)
	}
	if err := b.Abort(ctx, aborted); err != nil {
		t.Errorf("second Abort: %v, want nil (idempotent)", err)
	}
	if _, err := os.Stat(aborted.Root); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("aborted build area still there: %v", err)
	}
	open, err := b.Begin(ctx, "open", "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Abort(context.Background(), open) })
	writeFiles(t, open.Root, map[string]string{"f": "x"})
	imgs, err := b.Images(ctx)
	if err != nil || len(imgs) != 0 {
		t.Errorf("Images = %v, %v; want none (nothing committed)", imgs, err)
	}
	for _, img := range []string{"aborted", "open"} {
		_, err := b.Snapshots(ctx, img)
		wantErr(t, "Snapshots("+img+")", err, errdefs.ErrNotFound)
	}
}

func testCommitTwice(t *testing.T, b sandbox.Backend) {
	ctx := t.Context()
	first, err := b.Begin(ctx, "img", "")
	if err != nil {
		t.Fatal(err)
	}
	second, err := b.Begin(ctx, "img", "")
	if err != nil {
		t.Fatal(err)
	}
	if first.ID == second.ID || first.Root == second.Root {
		t.Fatalf("two builds share an area: %+v %+v", first, second)
	}
	writeFiles(t, first.Root, map[string]string{"who": "first"})
	writeFiles(t, second.Root, map[string]string{"who": "second"})
	if _, err := b.Commit(ctx, first, "v1"); err != nil {
		t.Fatal(err)
	}
	_, err = b.Commit(ctx, second, "v1")
	wantErr(t, "second Commit of v1", err, errdefs.ErrExists)
	// The loser's build is still usable: commit it under another name.
	if _, err := b.Commit(ctx, second, "v2"); err != nil {
		t.Fatalf("Commit of the losing build as v2: %v", err)
	}
	for v, who := range map[string]string{"v1": "first", "v2": "second"} {
		c, err := b.Clone(ctx, "img@"+v, "run-"+v)
		if err != nil {
			t.Fatal(err)
		}
		wantFile(t, c.Root, "who", who)
	}
}

func testBeginWithParent(t *testing.T, b sandbox.Backend) {
	ctx := t.Context()
	commit(t, b, "img", "", "v1", map[string]string{"keep": "1", "change": "old", "sub/deep": "d"})
	bd, err := b.Begin(ctx, "img", "v1")
	if err != nil {
		t.Fatal(err)
	}
	wantFile(t, bd.Root, "keep", "1")
	wantFile(t, bd.Root, "sub/deep", "d")
	writeFiles(t, bd.Root, map[string]string{"change": "new", "added": "a"})
	if err := os.Remove(filepath.Join(bd.Root, "keep")); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Commit(ctx, bd, "v2"); err != nil {
		t.Fatal(err)
	}
	c1, err := b.Clone(ctx, "img@v1", "run1")
	if err != nil {
		t.Fatal(err)
	}
	wantFile(t, c1.Root, "keep", "1")
	wantFile(t, c1.Root, "change", "old")
	wantNoFile(t, c1.Root, "added")
	c2, err := b.Clone(ctx, "img@v2", "run2")
	if err != nil {
		t.Fatal(err)
	}
	wantNoFile(t, c2.Root, "keep")
	wantFile(t, c2.Root, "change", "new")
	wantFile(t, c2.Root, "added", "a")
	wantFile(t, c2.Root, "sub/deep", "d")
}

func testDestroyIdempotent(t *testing.T, b sandbox.Backend) {
	ctx := t.Context()
	if err := b.Destroy(ctx, "never"); err != nil {
		t.Errorf("Destroy of a run without clone: %v", err)
	}
	commit(t, b, "img", "", "v1", map[string]string{"f": "orig"})
	c, err := b.Clone(ctx, "img@v1", "run1")
	if err != nil {
		t.Fatal(err)
	}
	writeFiles(t, c.Root, map[string]string{"f": "changed"})
	for i := range 2 {
		if err := b.Destroy(ctx, "run1"); err != nil {
			t.Errorf("Destroy #%d: %v", i+1, err)
		}
	}
	if _, err := os.Stat(filepath.Join(c.Root, "f")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("clone content still reachable after Destroy: %v", err)
	}
	if got := runIDs(t, b); len(got) != 0 {
		t.Errorf("List after Destroy = %v", got)
	}
	// A new clone for the same run starts from the snapshot again.
	c, err = b.Clone(ctx, "img@v1", "run1")
	if err != nil {
		t.Fatal(err)
	}
	wantFile(t, c.Root, "f", "orig")
}

func testList(t *testing.T, b sandbox.Backend) {
	ctx := t.Context()
	commit(t, b, "img", "", "v1", nil)
	commit(t, b, "img", "", "v2", nil)
	want := map[string]string{"a": "img@v1", "b": "img@v2", "c": "img@v1"}
	for run, snap := range want {
		if _, err := b.Clone(ctx, snap, run); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Destroy(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	delete(want, "b")
	cs, err := b.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, c := range cs {
		got[c.RunID] = c.Snapshot
		if _, err := os.Stat(c.Root); err != nil {
			t.Errorf("listed clone %s: root %s: %v", c.RunID, c.Root, err)
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("List = %v, want %v", got, want)
	}
}

func testDeleteSnapshot(t *testing.T, b sandbox.Backend) {
	ctx := t.Context()
	commit(t, b, "img", "", "v1", nil)
	commit(t, b, "img", "", "v2", nil)
	if _, err := b.Clone(ctx, "img@v1", "run1"); err != nil {
		t.Fatal(err)
	}
	wantErr(t, "DeleteSnapshot with a live clone", b.DeleteSnapshot(ctx, "img", "v1"), errdefs.ErrBusy)
	if _, err := b.Clone(ctx, "img@v1", "run2"); err != nil {
		t.Errorf("Clone after refused DeleteSnapshot: %v", err)
	}
	for _, run := range []string{"run1", "run2"} {
		if err := b.Destroy(ctx, run); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 2 {
		if err := b.DeleteSnapshot(ctx, "img", "v1"); err != nil {
			t.Fatalf("DeleteSnapshot #%d: %v", i+1, err)
		}
	}
	snaps, err := b.Snapshots(ctx, "img")
	if err != nil || len(snaps) != 1 || snaps[0].Version != "v2" {
		t.Errorf("Snapshots after delete = %v, %v; want [v2]", snaps, err)
	}
	_, err = b.Clone(ctx, "img@v1", "run3")
	wantErr(t, "Clone of deleted snapshot", err, errdefs.ErrNotFound)
	if err := b.DeleteSnapshot(ctx, "img", "v2"); err != nil {
		t.Fatal(err)
	}
	_, err = b.Snapshots(ctx, "img")
	wantErr(t, "Snapshots after deleting the last", err, errdefs.ErrNotFound)
	if imgs, err := b.Images(ctx); err != nil || len(imgs) != 0 {
		t.Errorf("Images after deleting the last snapshot = %v, %v", imgs, err)
	}
	// The name is free again.
	commit(t, b, "img", "", "v1", nil)
}

func testLeftovers(t *testing.T, b sandbox.Backend) {
	ctx := t.Context()
	ab, ok := b.(Abandoner)
	if !ok {
		t.Fatalf("%T does not implement storagetest.Abandoner", b)
	}
	live, err := b.Begin(ctx, "img", "")
	if err != nil {
		t.Fatal(err)
	}
	writeFiles(t, live.Root, map[string]string{"f": "live"})
	dead, err := b.Begin(ctx, "img", "")
	if err != nil {
		t.Fatal(err)
	}
	writeFiles(t, dead.Root, map[string]string{"f": "dead"})
	if err := ab.Abandon(dead); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if err := b.Leftovers(ctx); err != nil {
			t.Fatalf("Leftovers #%d: %v", i+1, err)
		}
	}
	if _, err := os.Stat(dead.Root); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("dead build area survived Leftovers: %v", err)
	}
	wantFile(t, live.Root, "f", "live")
	if _, err := b.Commit(ctx, live, "v1"); err != nil {
		t.Fatalf("Commit of the live build after Leftovers: %v", err)
	}
	if err := b.Abort(ctx, dead); err != nil {
		t.Errorf("Abort of a build Leftovers removed: %v", err)
	}
	snaps, err := b.Snapshots(ctx, "img")
	if err != nil || len(snaps) != 1 {
		t.Errorf("Snapshots = %v, %v; want [v1]", snaps, err)
	}
}
