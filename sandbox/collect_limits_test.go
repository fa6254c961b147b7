package sandbox

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestCollectLinkChains: links are resolved against the real tree, link
// chains included; the textual check alone would keep several of these.
func TestCollectLinkChains(t *testing.T) {
	type link struct{ at, to string }
	tests := []struct {
		name  string
		links []link
		// kept lists the links expected in dst; every other one is dropped.
		kept []string
	}{
		{"issue-shapes", []link{{"c/y", "."}, {"c/x", "y/y/y/../../../../.."}}, nil},
		{"chain-leaves", []link{{"m", "n/.."}, {"n", "."}, {"o", "m/.."}}, nil},
		{"dir-link-then-dotdot", []link{{"d/up", ".."}, {"e", "d/up/../.."}}, nil},
		{"deep-dotdot-via-link", []link{{"d/s/l", "../../d/s"}, {"f", "d/s/l/../../.."}}, nil},
		{"absolute-in-chain", []link{{"abs", "/etc"}, {"via", "abs/passwd"}}, nil},
		{"self-loop", []link{{"self", "self"}}, nil},
		{"ping-pong", []link{{"p", "q"}, {"q", "p"}}, nil},
		{"top-dot", []link{{"dot", "."}}, nil},
		{"file", []link{{"ok", "real.txt"}}, []string{"ok"}},
		{"chain-inside", []link{{"l1", "l2"}, {"l2", "d/real2.txt"}}, []string{"l1", "l2"}},
		{"into-subdir", []link{{"d/s/l", "../../real.txt"}}, []string{"d/s/l"}},
		{"sibling-dir", []link{{"d/s/l", "../t"}}, []string{"d/s/l"}},
		{"dangling-inside", []link{{"gone", "nothing/here"}}, []string{"gone"}},
		{"dangling-leaves", []link{{"gone", "nothing/../../x"}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src, dst := t.TempDir(), filepath.Join(t.TempDir(), "dst")
			for _, d := range []string{"c", "d/s", "d/t"} {
				mustDo(t, os.MkdirAll(filepath.Join(src, d), 0o755))
			}
			mustDo(t, os.WriteFile(filepath.Join(src, "real.txt"), []byte("ok"), 0o644))
			mustDo(t, os.WriteFile(filepath.Join(src, "d", "real2.txt"), []byte("ok"), 0o644))
			for _, l := range tt.links {
				mustDo(t, os.Symlink(l.to, filepath.Join(src, l.at)))
			}
			var notes []string
			_, err := Collect(src, dst, nil, ArtifactCap{}, func(f string, a ...any) { notes = append(notes, fmt.Sprintf(f, a...)) })
			mustDo(t, err)
			want := map[string]bool{}
			for _, k := range tt.kept {
				want[k] = true
			}
			for _, l := range tt.links {
				_, err := os.Lstat(filepath.Join(dst, l.at))
				if kept := err == nil; kept != want[l.at] {
					t.Errorf("%s -> %s: kept=%v, want %v (notes %q)", l.at, l.to, kept, want[l.at], notes)
				}
			}
			if dropped := len(tt.links) - len(tt.kept); len(notes) != dropped {
				t.Errorf("%d notes for %d dropped links: %q", len(notes), dropped, notes)
			}
			// Whatever was kept must resolve inside dst.
			filepath.WalkDir(dst, func(p string, d os.DirEntry, err error) error {
				if err == nil && d.Type()&os.ModeSymlink != 0 {
					if r, err := filepath.EvalSymlinks(p); err == nil && !strings.HasPrefix(r, dst+string(filepath.Separator)) && r != dst {
						t.Errorf("collected %s resolves to %s, outside %s", p, r, dst)
					}
				}
				return nil
			})
		})
	}
}

func mustDo(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestCollectStagingIs0700: staged artifacts are not for the host's other
// users.
func TestCollectStagingIs0700(t *testing.T) {
	src, dst := t.TempDir(), filepath.Join(t.TempDir(), "dst")
	mustDo(t, os.MkdirAll(filepath.Join(src, "a", "b"), 0o777))
	mustDo(t, os.WriteFile(filepath.Join(src, "a", "b", "f"), []byte("x"), 0o644))
	_, err := Collect(src, dst, nil, ArtifactCap{}, nil)
	mustDo(t, err)
	for _, d := range []string{dst, filepath.Join(dst, "a"), filepath.Join(dst, "a", "b")} {
		fi, err := os.Stat(d)
		mustDo(t, err)
		if fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: mode %v, want 0700", d, fi.Mode().Perm())
		}
	}
}

// TestCollectSparse: a 100T sparse file is refused by its size before a
// byte of it is read; a sparse file under the cap is copied sparse, with
// the sha256 of its full content.
func TestCollectSparse(t *testing.T) {
	t.Run("100T-refused", func(t *testing.T) {
		src, dst := hugeSparseDir(t), filepath.Join(t.TempDir(), "dst")
		f, err := os.Create(filepath.Join(src, "huge"))
		mustDo(t, err)
		mustDo(t, f.Truncate(100<<40))
		f.Close()
		_, err = Collect(src, dst, nil, ArtifactCap{Files: 10, Bytes: 10 << 30}, nil)
		if !errors.Is(err, ErrArtifactCap) {
			t.Fatalf("err = %v, want ErrArtifactCap", err)
		}
		if !strings.Contains(err.Error(), "huge") {
			t.Errorf("error does not name the file: %v", err)
		}
		if _, err := os.Lstat(filepath.Join(dst, "huge")); err == nil {
			t.Error("the refused file was staged")
		}
	})
	t.Run("copied-sparse", func(t *testing.T) {
		src, dst := t.TempDir(), filepath.Join(t.TempDir(), "dst")
		const size = 256 << 20
		f, err := os.Create(filepath.Join(src, "sparse"))
		mustDo(t, err)
		mustDo(t, f.Truncate(size))
		_, err = f.WriteAt([]byte("head"), 0)
		mustDo(t, err)
		_, err = f.WriteAt([]byte("tail"), size-4)
		mustDo(t, err)
		mustDo(t, f.Close())
		arts, err := Collect(src, dst, nil, ArtifactCap{Bytes: 1 << 30}, nil)
		mustDo(t, err)
		want := sha256File(t, filepath.Join(src, "sparse"))
		if len(arts) != 1 || arts[0].Size != size || arts[0].SHA256 != want {
			t.Fatalf("artifacts %+v, want size %d sha256 %s", arts, size, want)
		}
		var st syscall.Stat_t
		mustDo(t, syscall.Stat(filepath.Join(dst, "sparse"), &st))
		if used := st.Blocks * 512; used > 16<<20 {
			t.Errorf("staged copy uses %d bytes of disk for %d bytes of data: not sparse", used, 8)
		}
		if got := sha256File(t, filepath.Join(dst, "sparse")); got != want {
			t.Errorf("staged content sha256 %s, want %s", got, want)
		}
	})
}

func sha256File(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	mustDo(t, err)
	defer f.Close()
	h := sha256.New()
	_, err = io.Copy(h, f)
	mustDo(t, err)
	return fmt.Sprintf("%x", h.Sum(nil))
}

// TestCollectCaps: past the entry or byte cap collection stops with
// ErrArtifactCap; 20,000 files under the cap are all collected.
func TestCollectCaps(t *testing.T) {
	src := t.TempDir()
	for i := range 20000 {
		mustDo(t, os.WriteFile(filepath.Join(src, fmt.Sprintf("f%05d", i)), []byte("x"), 0o644))
	}
	t.Run("under", func(t *testing.T) {
		arts, err := Collect(src, filepath.Join(t.TempDir(), "dst"), nil, ArtifactCap{Files: 50000, Bytes: 1 << 20}, nil)
		mustDo(t, err)
		if len(arts) != 20000 {
			t.Fatalf("%d artifacts, want 20000", len(arts))
		}
	})
	t.Run("files", func(t *testing.T) {
		_, err := Collect(src, filepath.Join(t.TempDir(), "dst"), nil, ArtifactCap{Files: 10000}, nil)
		if !errors.Is(err, ErrArtifactCap) || !strings.Contains(err.Error(), "10000") {
			t.Fatalf("err = %v, want ErrArtifactCap naming 10000", err)
		}
	})
	t.Run("bytes", func(t *testing.T) {
		_, err := Collect(src, filepath.Join(t.TempDir(), "dst"), nil, ArtifactCap{Bytes: 100}, nil)
		if !errors.Is(err, ErrArtifactCap) {
			t.Fatalf("err = %v, want ErrArtifactCap", err)
		}
	})
}

// TestCollectNotesBounded: thousands of hostile links make a bounded
// number of console notes.
func TestCollectNotesBounded(t *testing.T) {
	src := t.TempDir()
	for i := range 1000 {
		mustDo(t, os.Symlink("/etc/passwd", filepath.Join(src, fmt.Sprintf("l%04d", i))))
	}
	var notes []string
	_, err := Collect(src, filepath.Join(t.TempDir(), "dst"), nil, ArtifactCap{}, func(f string, a ...any) { notes = append(notes, fmt.Sprintf(f, a...)) })
	mustDo(t, err)
	if len(notes) != maxLinkNotes+1 || !strings.Contains(notes[len(notes)-1], fmt.Sprint(1000-maxLinkNotes)) {
		t.Fatalf("%d notes, last %q", len(notes), notes[len(notes)-1])
	}
}
