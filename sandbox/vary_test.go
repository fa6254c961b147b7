package sandbox

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-build/kiln/errdefs"
)

// TestVaryUserGroup: the job's uid and gid get the varied names first in
// the clone's /etc/passwd and /etc/group, the image's entries kept after
// them; a link the image holds is followed within the clone only, and
// replaced rather than written through.
func TestVaryUserGroup(t *testing.T) {
	const passwd = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false" // no final newline
	const group = "root:x:0:\n"
	v := Variations{UserName: "kiln-b", GroupName: "kiln-b-grp"}
	wantPasswd := "kiln-b:x:1000:1001:kiln-b:/home/kiln-b:/bin/sh\n" + passwd + "\n"
	wantGroup := "kiln-b-grp:x:1001:\n" + group
	tests := []struct {
		name    string
		setup   func(t *testing.T, root, outside string)
		passwd  string // want, "" with wantErr
		group   string
		wantErr string
	}{
		{"regular files", func(t *testing.T, root, _ string) {
			write(t, filepath.Join(root, "etc/passwd"), passwd)
			write(t, filepath.Join(root, "etc/group"), group)
		}, wantPasswd, wantGroup, ""},
		{"no files", func(t *testing.T, root, _ string) {}, "kiln-b:x:1000:1001:kiln-b:/home/kiln-b:/bin/sh\n", "kiln-b-grp:x:1001:\n", ""},
		{"links within the clone", func(t *testing.T, root, _ string) {
			write(t, filepath.Join(root, "usr/share/passwd"), passwd)
			write(t, filepath.Join(root, "usr/share/group"), group)
			symlink(t, "../usr/share/passwd", filepath.Join(root, "etc/passwd"))
			symlink(t, "/usr/share/group", filepath.Join(root, "etc/group"))
		}, wantPasswd, wantGroup, ""},
		{"link out of the clone", func(t *testing.T, root, outside string) {
			symlink(t, "../../outside/passwd", filepath.Join(root, "etc/passwd"))
		}, "", "", "escapes"},
		{"absolute link is the clone's path", func(t *testing.T, root, outside string) {
			symlink(t, "/../../outside/passwd", filepath.Join(root, "etc/passwd"))
		}, "kiln-b:x:1000:1001:kiln-b:/home/kiln-b:/bin/sh\n", "kiln-b-grp:x:1001:\n", ""},
		{"a fifo", func(t *testing.T, root, _ string) {
			if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := mkfifo(filepath.Join(root, "etc/passwd")); err != nil {
				t.Fatal(err)
			}
		}, "kiln-b:x:1000:1001:kiln-b:/home/kiln-b:/bin/sh\n", "kiln-b-grp:x:1001:\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			root, outside := filepath.Join(dir, "clone"), filepath.Join(dir, "outside")
			write(t, filepath.Join(outside, "passwd"), passwd)
			if err := os.MkdirAll(root, 0o755); err != nil {
				t.Fatal(err)
			}
			tt.setup(t, root, outside)
			_, err := v.applyToClone(root, 1000, 1001, "/home/kiln-b")
			if got, _ := os.ReadFile(filepath.Join(outside, "passwd")); string(got) != passwd {
				t.Fatalf("the file out of the clone became %q", got)
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for name, want := range map[string]string{"etc/passwd": tt.passwd, "etc/group": tt.group} {
				p := filepath.Join(root, name)
				if st, err := os.Lstat(p); err != nil || !st.Mode().IsRegular() {
					t.Fatalf("%s: %v, %v: want a regular file", name, st, err)
				}
				if got, _ := os.ReadFile(p); string(got) != want {
					t.Errorf("%s = %q, want %q", name, got, want)
				}
			}
			if m, _ := filepath.Glob(filepath.Join(root, "etc/*.kiln-vary")); len(m) > 0 {
				t.Errorf("left behind: %v", m)
			}
		})
	}
}

func TestVaryCheckUserGroup(t *testing.T) {
	for _, v := range []Variations{
		{UserName: "kiln-b"},
		{GroupName: "g"},
		{UserName: "root\nx", GroupName: "g"},
		{UserName: "a:0:0", GroupName: "g"},
	} {
		if err := v.check(); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("%+v: %v, want ErrInvalid", v, err)
		}
	}
}

func write(t *testing.T, p, s string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func symlink(t *testing.T, target, p string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, p); err != nil {
		t.Fatal(err)
	}
}
