package linux

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"
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
