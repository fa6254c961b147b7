package idmap

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/kiln-build/kiln/internal/testsupport"
	"golang.org/x/sys/unix"
)

// TestDetached: through an idmapped detached mount a root-owned file shows
// as the range's base, the mount is nosuid and nodev (and read-only when
// asked), and without a namespace the host's owner shows.
func TestDetached(t *testing.T) {
	testsupport.NeedRoot(t)
	const base = 3 << 30
	ns, err := Userns(base, 1<<16)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "f"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		userns   *os.File
		readOnly bool
		uid      uint32
	}{
		{"idmapped", ns, false, base},
		{"idmapped read-only", ns, true, base},
		{"plain", nil, true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Detached(dir, tc.userns, tc.readOnly)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			var st unix.Stat_t
			if err := unix.Fstatat(int(m.Fd()), "f", &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				t.Fatal(err)
			}
			if st.Uid != tc.uid || st.Gid != tc.uid {
				t.Errorf("owner %d:%d through the mount, want %d:%d", st.Uid, st.Gid, tc.uid, tc.uid)
			}
			var sf unix.Statfs_t
			if err := unix.Fstatfs(int(m.Fd()), &sf); err != nil {
				t.Fatal(err)
			}
			want := int64(unix.ST_NOSUID | unix.ST_NODEV)
			if tc.readOnly {
				want |= unix.ST_RDONLY
			}
			if sf.Flags&(unix.ST_NOSUID|unix.ST_NODEV|unix.ST_RDONLY) != want {
				t.Errorf("mount flags %#x, want %#x of nosuid|nodev|rdonly", sf.Flags, want)
			}
		})
	}
}

// TestNamespaces: a range's namespace is made once and kept, Get hands out
// duplicates of it that outlive Close, and after Close a Get makes a new
// one.
func TestNamespaces(t *testing.T) {
	testsupport.NeedRoot(t)
	const base = 3 << 30
	ino := func(f *os.File) uint64 {
		t.Helper()
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil {
			t.Fatal(err)
		}
		return st.Ino
	}
	var n Namespaces
	first, err := n.Get(base)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	again, err := n.Get(base)
	if err != nil {
		t.Fatal(err)
	}
	if ino(again) != ino(first) {
		t.Fatalf("second Get: namespace %d, want the kept one, %d", ino(again), ino(first))
	}
	again.Close()
	if kept := n.Kept(); len(kept) != 1 || kept[0] != base {
		t.Fatalf("kept %v, want [%d]", kept, base)
	}
	n.Close()
	if kept := n.Kept(); len(kept) != 0 {
		t.Fatalf("kept %v after Close", kept)
	}
	ino(first) // still open: Close took only the kept file
	fresh, err := n.Get(base)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	defer fresh.Close()
	if ino(fresh) == ino(first) {
		t.Fatal("Get after Close handed out the closed namespace")
	}
}
