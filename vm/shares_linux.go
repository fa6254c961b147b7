package vm

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/kiln-build/kiln/internal/idmap"
	"golang.org/x/sys/unix"
)

// shares gives the guest its 9p shares: the control share, the run's
// root and each of the spec's mounts.
func (st *starting) shares(context.Context) error {
	// The control share is read-only: the guest's root (the job, through
	// /proc/1/root/kiln) could otherwise plant objects in it.
	if err := st.share("kiln", filepath.Join(st.dir, "kiln"), true); err != nil {
		return err
	}
	if err := st.share("root", st.spec.Root, false); err != nil {
		return err
	}
	for i, m := range st.spec.Mounts {
		if err := st.share("m"+strconv.Itoa(i), m.Source, m.ReadOnly); err != nil {
			return err
		}
	}
	return nil
}

// share adds the share tag of src. Each share is a detached nosuid,nodev
// mount qemu gets as a file. Writable ones are idmapped onto qemu's range,
// so that qemu, root in its namespace, keeps passthrough's real owners and
// symlinks there; read-only ones are plain (their files are readable by
// their mode, as in a container).
func (st *starting) share(tag, src string, ro bool) error {
	var ns *os.File
	if !ro {
		ns = st.userns
	}
	var m *os.File
	var err error
	var sfs unix.Statfs_t
	if !ro && unix.Statfs(src, &sfs) == nil && sfs.Type == unix.OVERLAYFS_SUPER_MAGIC {
		// overlayfs is not idmapped itself: a second overlay of its
		// layers, idmapped, with their mounts in the guest's directory.
		m, err = idmap.Overlay(src, st.dir, "vm", st.base, ns)
	} else {
		m, err = idmap.Detached(src, ns, ro)
	}
	if err != nil {
		return fmt.Errorf("vm: share %s: %w", tag, err)
	}
	fs := "local,id=fs-" + tag + ",path=" + fdPath(st.files.add(m)) + ",security_model=passthrough,multidevs=remap"
	if ro {
		fs += ",readonly=on"
	}
	st.args = append(st.args, "-fsdev", fs, "-device", virtioDevice(st.machine, "virtio-9p")+",fsdev=fs-"+tag+",mount_tag="+tag)
	return nil
}
