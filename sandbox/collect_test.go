package sandbox

import (
	"os"
	"path/filepath"
	"testing"
)

func TestCollectHostileLinks(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("host secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		link     string // created at out/<name>
		wantKept bool
	}{
		{"to-etc", "/etc/passwd", false},
		{"to-root", "/", false},
		{"dotdot", "../../..", false},
		{"dotdot-hidden", "sub/../../x", false},
		{"to-host-file", secret, false},
		{"inside", "real.txt", true},
		{"inside-via-dir", "sub/../real.txt", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src, dst := t.TempDir(), filepath.Join(t.TempDir(), "dst")
			os.WriteFile(filepath.Join(src, "real.txt"), []byte("ok"), 0o644)
			os.Mkdir(filepath.Join(src, "sub"), 0o755)
			if err := os.Symlink(tt.link, filepath.Join(src, tt.name)); err != nil {
				t.Fatal(err)
			}
			var notes []string
			arts, err := Collect(src, dst, nil, ArtifactCap{}, func(f string, a ...any) { notes = append(notes, f) })
			if err != nil {
				t.Fatal(err)
			}
			_, lerr := os.Lstat(filepath.Join(dst, tt.name))
			kept := lerr == nil
			if kept != tt.wantKept {
				t.Fatalf("kept=%v want %v (notes %v)", kept, tt.wantKept, notes)
			}
			if !tt.wantKept && len(notes) == 0 {
				t.Fatal("an escaping link was dropped without a note in the log")
			}
			for _, a := range arts {
				if a.Path == tt.name && a.SHA256 != "" {
					t.Fatalf("link %s was read as a file", tt.name)
				}
			}
			if tt.wantKept {
				if got, _ := os.Readlink(filepath.Join(dst, tt.name)); got != tt.link {
					t.Fatalf("link target %q, want %q", got, tt.link)
				}
			}
		})
	}
}

func TestCollectLinkedDirIsNotEntered(t *testing.T) {
	src, dst := t.TempDir(), filepath.Join(t.TempDir(), "dst")
	if err := os.Symlink("/etc", filepath.Join(src, "etc")); err != nil {
		t.Fatal(err)
	}
	if _, err := Collect(src, dst, []string{"etc/*"}, ArtifactCap{}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dst, "etc", "passwd")); err == nil {
		t.Fatal("collected /etc/passwd through a link in /out")
	}
}

func TestCollectGlobsAndContent(t *testing.T) {
	src, dst := t.TempDir(), filepath.Join(t.TempDir(), "dst")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(src, "deb", "sub"), 0o755))
	must(os.WriteFile(filepath.Join(src, "a.txt"), []byte("hello"), 0o644))
	must(os.WriteFile(filepath.Join(src, "b.log"), []byte("log"), 0o644))
	must(os.WriteFile(filepath.Join(src, "deb", "sub", "x.deb"), []byte("deb"), 0o755))
	arts, err := Collect(src, dst, []string{"*.txt", "deb"}, ArtifactCap{}, nil)
	must(err)
	got := map[string]Artifact{}
	for _, a := range arts {
		got[a.Path] = a
	}
	if _, ok := got["b.log"]; ok {
		t.Error("b.log collected though no glob matches it")
	}
	a, ok := got["a.txt"]
	if !ok || a.Size != 5 || a.SHA256 != "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824" {
		t.Errorf("a.txt: %+v", a)
	}
	if x, ok := got["deb/sub/x.deb"]; !ok || x.Mode.Perm() != 0o755 {
		t.Errorf("deb/sub/x.deb: %+v", x)
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "a.txt")); string(b) != "hello" {
		t.Errorf("content %q", b)
	}
}

func TestCollectSkipsSpecialFiles(t *testing.T) {
	src, dst := t.TempDir(), filepath.Join(t.TempDir(), "dst")
	if err := mkfifo(filepath.Join(src, "fifo")); err != nil {
		t.Skip("mkfifo:", err)
	}
	var notes int
	if _, err := Collect(src, dst, nil, ArtifactCap{}, func(string, ...any) { notes++ }); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(dst, "fifo")); err == nil || notes != 1 {
		t.Fatalf("fifo collected or not reported (notes=%d)", notes)
	}
}
