package treestore

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/kiln-build/kiln/internal/testsupport"
)

// A copied disk image keeps its holes: the copy holds the source's data
// and no more blocks than it needs for it.
func TestCopySparse(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	const size = 256 << 20
	data := bytes.Repeat([]byte("kiln"), 4096)
	for _, off := range []int64{0, 100 << 20, size - int64(len(data))} {
		if _, err := f.WriteAt(data, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "dst")
	if err := copySparse(src, dst); err != nil {
		t.Fatal(err)
	}
	a, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Fatal("copy differs from its source")
	}
	var st syscall.Stat_t
	if err := syscall.Stat(dst, &st); err != nil {
		t.Fatal(err)
	}
	// Three 16 KiB extents; a filesystem may round each up a little.
	if used := st.Blocks * 512; used > 4<<20 {
		t.Errorf("copy uses %d bytes of disk for %d of data: holes filled", used, 3*len(data))
	}
	if err := copySparse(src, dst); err == nil {
		t.Error("copy over an existing file succeeded")
	}
}

// The template every disk-limited overlay clone copies is small however
// large the limit (no blocks reserved for resizing it), and templates of
// older mkfs options are removed when a new one is made.
func TestDiskTemplate(t *testing.T) {
	testsupport.NeedCommand(t, "mkfs.ext4")
	dir := t.TempDir()
	old := filepath.Join(dir, "10737418240.img")
	if err := os.WriteFile(old, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	o := overlayOps{templates: dir}
	p, err := o.template(t.Context(), 10<<30)
	if err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	if used := st.Blocks * 512; used > 1<<20 {
		t.Errorf("a 10 GiB template holds %d bytes of data, want under 1 MiB", used)
	}
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Errorf("old template still there: %v", err)
	}
}
