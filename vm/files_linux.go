package vm

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// qemuFiles are the open files a qemu process gets, as fds 3 on, in order
// (exec.Cmd.ExtraFiles). qemu runs as an unprivileged id in a user
// namespace of its own (see userns_linux.go): what it must reach in kiln's
// directories, which it cannot enter, it reaches through these.
type qemuFiles []*os.File

// add appends f and returns its fd number in qemu.
func (q *qemuFiles) add(f *os.File) int {
	*q = append(*q, f)
	return 2 + len(*q)
}

// close closes kiln's copies; qemu, once started, keeps its own. A
// pointer receiver, so that a deferred close closes what was added after
// the defer too.
func (q *qemuFiles) close() {
	for _, f := range *q {
		_ = f.Close() // some are closed by their owners as well
	}
}

// fdPath is how qemu names the file it holds as fd n.
func fdPath(n int) string { return "/proc/self/fd/" + strconv.Itoa(n) }

// boot adds the kernel and initramfs and returns their qemu arguments.
// qemu opens /proc/self/fd/N anew, which checks the file's own mode:
// they must be readable by others (kiln's caches are made 0644; nothing
// in them is secret).
func (q *qemuFiles) boot(kernel, initrd string) ([]string, error) {
	var args []string
	for _, a := range [][2]string{{"-kernel", kernel}, {"-initrd", initrd}} {
		f, err := os.Open(a[1])
		if err != nil {
			return nil, fmt.Errorf("vm: %w", err)
		}
		st, err := f.Stat()
		if err == nil && st.Mode().Perm()&0o004 == 0 {
			err = fmt.Errorf("vm: %s is not readable by others, and qemu runs as an unprivileged user (chmod o+r it)", a[1])
		}
		if err != nil {
			f.Close()
			return nil, err
		}
		args = append(args, a[0], fdPath(q.add(f)))
	}
	return args, nil
}

// listen makes a listening Unix socket at path (in the guest's directory,
// which only kiln enters) and adds it; qemu serves QMP on it.
func (q *qemuFiles) listen(path string) (int, error) {
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return 0, fmt.Errorf("vm: qmp: %w", err)
	}
	ln.SetUnlinkOnClose(false)
	f, err := ln.File()
	ln.Close()
	if err != nil {
		return 0, fmt.Errorf("vm: qmp: %w", err)
	}
	return q.add(f), nil
}

// guestDirSize bounds a guest's directory, a tmpfs of its own (pidfile,
// QMP socket, control share, qemu.log): qemu's messages, which a guest
// can provoke, cannot fill a host disk.
const guestDirSize = "4m"

// makeGuestDir makes dir a small tmpfs, nodev, nosuid and noexec, for
// root only, with the control share's directory kiln/ in it.
func makeGuestDir(dir string) error {
	if err := os.Mkdir(dir, 0o700); err != nil {
		return fmt.Errorf("vm: %w", err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NODEV|unix.MS_NOSUID|unix.MS_NOEXEC, "mode=0700,size="+guestDirSize+",nr_inodes=64"); err != nil {
		os.Remove(dir)
		return fmt.Errorf("vm: guest directory: mount tmpfs: %w", err)
	}
	// 0755: qemu reads the run script as no owner of it, through the
	// share's file (the tmpfs root above is 0700).
	if err := os.Mkdir(filepath.Join(dir, "kiln"), 0o755); err != nil {
		_ = removeGuestDir(dir)
		return fmt.Errorf("vm: %w", err)
	}
	return nil
}

// removeGuestDir unmounts a guest's directory and removes it. Idempotent;
// a directory of an older kiln, not a mount, is removed as it is. Nothing
// is removed through a mount: the tmpfs is detached first, and nothing
// else is ever mounted there (the shares are detached mounts).
func removeGuestDir(dir string) error {
	err := unix.Unmount(dir, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW)
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("vm: unmount %s: %w", dir, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("vm: %w", err)
	}
	return nil
}
