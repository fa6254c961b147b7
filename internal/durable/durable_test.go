package durable

import (
	"os"
	"path/filepath"
	"testing"
)

func TestWriteFile(t *testing.T) {
	for _, write := range []struct {
		name string
		f    func(string, []byte, os.FileMode) error
	}{{"WriteFile", WriteFile}, {"Replace", Replace}} {
		t.Run(write.name, func(t *testing.T) { testWrite(t, write.f) })
	}
}

func testWrite(t *testing.T, write func(string, []byte, os.FileMode) error) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	for _, tc := range []struct {
		name string
		data string
		perm os.FileMode
	}{
		{"create", "one", 0o600},
		{"replace", "two, longer", 0o644},
		{"shorter", "3", 0o600},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := write(p, []byte(tc.data), tc.perm); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(p)
			if err != nil || string(got) != tc.data {
				t.Fatalf("read %q, %v; want %q", got, err, tc.data)
			}
			fi, _ := os.Stat(p)
			if fi.Mode().Perm() != tc.perm {
				t.Fatalf("mode %v, want %v", fi.Mode().Perm(), tc.perm)
			}
			if ents, _ := os.ReadDir(dir); len(ents) != 1 {
				t.Fatalf("temporary files left: %v", ents)
			}
		})
	}
}

func TestWriteFileErrorLeavesOld(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := WriteFile(p, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A directory in the way of the rename makes the write fail late.
	if err := WriteFile(dir, []byte("x"), 0o600); err == nil {
		t.Fatal("writing over a directory succeeded")
	}
	if got, _ := os.ReadFile(p); string(got) != "old" {
		t.Fatalf("old content changed: %q", got)
	}
	if ents, _ := os.ReadDir(filepath.Dir(dir)); len(ents) == 0 {
		t.Fatal("parent vanished")
	}
}
