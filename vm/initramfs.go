package vm

import (
	"bufio"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// guestModules are the modules the guest needs: virtio on PCI (q35) or
// MMIO (microvm) and 9p over virtio for its root and shares; the ACPI
// power button and evdev so the init hears a QMP system_powerdown;
// virtio_console for the port the exit status goes back on;
// virtio_net for the NIC of a guest with network = "bridge" (loaded in
// every guest: without a NIC it only registers its driver). Their
// dependencies (netfs, fscache, virtio_ring, failover, ...) are added from
// modules.dep; a driver built into the kernel is simply not found there.
var guestModules = []string{"virtio_pci", "virtio_mmio", "9pnet_virtio", "9p", "button", "evdev", "virtio_net", "virtio_console"}

// cpioFile is one entry of an initramfs.
type cpioFile struct {
	name  string // relative, e.g. "bin/busybox"
	mode  uint32 // type and permission bits (cpio's st_mode)
	rdev  [2]uint32
	data  []byte
	fromP string // host file to copy instead of data
}

const (
	cpioDir  = 0o040000
	cpioReg  = 0o100000
	cpioChr  = 0o020000
	cpioLink = 0o120000
)

// writeCpio writes files as a gzipped newc cpio archive, the format the
// kernel unpacks into its initial rootfs.
func writeCpio(w io.Writer, files []cpioFile) error {
	zw, err := gzip.NewWriterLevel(w, gzip.BestSpeed)
	if err != nil {
		return err
	}
	bw := bufio.NewWriter(zw)
	var off int64
	pad := func() error {
		if n := (4 - off%4) % 4; n > 0 {
			off += n
			_, err := bw.Write(make([]byte, n))
			return err
		}
		return nil
	}
	put := func(ino int, f cpioFile, size int64) error {
		name := f.name + "\x00"
		hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
			ino, f.mode, 0, 0, 1, 0, size, 0, 0, f.rdev[0], f.rdev[1], len(name), 0)
		n, err := bw.WriteString(hdr + name)
		off += int64(n)
		if err != nil {
			return err
		}
		return pad()
	}
	for i, f := range files {
		data := f.data
		if f.fromP != "" {
			if data, err = os.ReadFile(f.fromP); err != nil {
				return err
			}
		}
		if err := put(i+1, f, int64(len(data))); err != nil {
			return err
		}
		n, err := bw.Write(data)
		off += int64(n)
		if err != nil {
			return err
		}
		if err := pad(); err != nil {
			return err
		}
	}
	if err := put(0, cpioFile{name: "TRAILER!!!"}, 0); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	return zw.Close()
}

// moduleOrder returns the module files (relative to the module tree) that
// want needs, dependencies first, read from modules.dep. Modules missing
// from modules.dep are taken to be built in.
func moduleOrder(modulesDir string, want []string) ([]string, error) {
	f, err := os.Open(filepath.Join(modulesDir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("kernel modules: %w", err)
	}
	defer f.Close()
	deps := map[string][]string{} // module name -> deps' files; "" key unused
	files := map[string]string{}  // module name -> file
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		file, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		name := modName(file)
		files[name] = file
		for _, d := range strings.Fields(rest) {
			deps[name] = append(deps[name], modName(d))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	var order []string
	seen := map[string]bool{}
	var visit func(string)
	visit = func(m string) {
		if seen[m] || files[m] == "" {
			return
		}
		seen[m] = true
		for _, d := range deps[m] {
			visit(d)
		}
		order = append(order, files[m])
	}
	for _, m := range want {
		visit(m)
	}
	return order, nil
}

// modName turns "kernel/fs/9p/9p.ko.xz" into "9p" (modules.dep spells
// names with '-' or '_' as the file does; the kernel treats them alike).
func modName(file string) string {
	b := path.Base(file)
	if i := strings.Index(b, ".ko"); i >= 0 {
		b = b[:i]
	}
	return strings.ReplaceAll(b, "-", "_")
}
