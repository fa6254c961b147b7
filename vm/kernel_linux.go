package vm

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
)

// ensureKernel returns the kernel qemu boots: the bzImage unpacked once
// into an ELF vmlinux (cached in Dir), which qemu starts at its PVH entry.
// A compressed bzImage unpacks itself in the guest, which under TCG costs
// more than the rest of the boot (12 s against 2 s here); unpacked on the
// host it takes a fraction of a second, once per kernel. A kernel that
// cannot be unpacked (no known compression, no PVH note) is booted as is.
func (l *Launcher) ensureKernel(ctx context.Context) (string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.kernel != "" {
		return l.kernel, nil
	}
	st, err := os.Stat(l.opts.Kernel)
	if err != nil {
		return "", fmt.Errorf("vm: guest kernel: %w", err)
	}
	h := sha256.Sum256(fmt.Appendf(nil, "%s %d %d", l.opts.Kernel, st.Size(), st.ModTime().UnixNano()))
	path := filepath.Join(l.opts.Dir, "vmlinux-"+hex.EncodeToString(h[:])[:16])
	if _, err := os.Stat(path); err == nil {
		if err := os.Chmod(path, 0o644); err != nil { // an older kiln made it 0600
			return "", fmt.Errorf("vm: guest kernel: %w", err)
		}
		l.kernel = path
		return path, nil
	}
	data, err := os.ReadFile(l.opts.Kernel)
	if err != nil {
		return "", fmt.Errorf("vm: guest kernel: %w", err)
	}
	if _, err := elf.NewFile(bytes.NewReader(data)); err == nil {
		l.kernel = l.opts.Kernel // already an ELF
		return l.kernel, nil
	}
	tmp, err := os.CreateTemp(l.opts.Dir, ".vmlinux-*")
	if err != nil {
		return "", fmt.Errorf("vm: unpack kernel: %w", err)
	}
	defer os.Remove(tmp.Name())
	ok := unpackKernel(ctx, data, tmp)
	if err := tmp.Chmod(0o644); err != nil { // qemu reads it as no owner of it
		tmp.Close()
		return "", fmt.Errorf("vm: unpack kernel: %w", err)
	}
	if cerr := tmp.Close(); cerr != nil {
		return "", fmt.Errorf("vm: unpack kernel: %w", cerr)
	}
	if !ok || !hasPVHNote(tmp.Name()) {
		l.log.Info("booting the compressed kernel (slow under TCG): cannot unpack it to an ELF with a PVH entry", "kernel", l.opts.Kernel)
		l.kernel = l.opts.Kernel
		return l.kernel, nil
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return "", fmt.Errorf("vm: unpack kernel: %w", err)
	}
	removeOthers(l.opts.Dir, "vmlinux-*", path)
	l.kernel = path
	return path, nil
}

// unpackKernel finds the compressed vmlinux inside a bzImage and writes it
// to w: gzip by the standard library, xz and zstd by their tools.
func unpackKernel(ctx context.Context, bz []byte, w io.Writer) bool {
	for _, c := range []struct {
		magic []byte
		tool  string
	}{
		{[]byte("\xfd7zXZ\x00"), "xz"},
		{[]byte("\x28\xb5\x2f\xfd"), "zstd"},
		{[]byte("\x1f\x8b\x08\x00"), ""},
	} {
		i := bytes.Index(bz, c.magic)
		if i < 0 {
			continue
		}
		if c.tool == "" {
			zr, err := gzip.NewReader(bytes.NewReader(bz[i:]))
			if err != nil {
				return false
			}
			zr.Multistream(false)
			_, err = io.Copy(w, zr) //nolint:gosec // G110: the host's own kernel image, not input
			return err == nil
		}
		// The stream is followed by the rest of the bzImage, which the
		// tools call trailing garbage; what came before it is complete.
		cmd := exec.CommandContext(ctx, c.tool, "-dcq")
		cmd.Stdin = bytes.NewReader(bz[i:])
		cmd.Stdout = w
		_ = cmd.Run()
		return true
	}
	return false
}

// hasPVHNote reports whether path is an ELF kernel with a Xen PVH entry
// note, which qemu needs to boot an ELF vmlinux.
func hasPVHNote(path string) bool {
	f, err := elf.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		b, err := io.ReadAll(p.Open())
		if err != nil {
			continue
		}
		// Notes: namesz, descsz, type, name, desc; XEN_ELFNOTE_PHYS32_ENTRY is 18.
		for len(b) >= 12 {
			nsz := int(le32(b[0:]))
			dsz := int(le32(b[4:]))
			typ := le32(b[8:])
			off := 12 + (nsz+3)&^3
			if off > len(b) {
				break
			}
			if typ == 18 && bytes.HasPrefix(b[12:], []byte("Xen")) {
				return true
			}
			b = b[min(len(b), off+(dsz+3)&^3):]
		}
	}
	return false
}

func le32(b []byte) uint32 {
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}
