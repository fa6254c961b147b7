package idmap

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// RangeSize is how many ids a sandbox's user namespace maps, 0..65535
// (nobody, 65534, among them): every sandbox tier gives each sandbox a
// host range of this size.
const RangeSize = 1 << 16

// Userns returns an open file of a new user namespace whose uids and gids
// 0..size-1 map onto the host's base..base+size-1, for Detached. No
// process stays in it: it is made by a child stopped before it runs
// anything (traced, so it stops at its exec), which is killed once the
// namespace is open; the namespace lives as long as the file. Safe for
// concurrent use.
func Userns(base, size uint32) (*os.File, error) {
	// ptrace binds the tracee to this thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	m := []syscall.SysProcIDMap{{ContainerID: 0, HostID: int(base), Size: int(size)}}
	cmd := exec.Command("/proc/self/exe")
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  unix.CLONE_NEWUSER,
		UidMappings: m,
		GidMappings: m,
		Ptrace:      true,
		Pdeathsig:   unix.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("make user namespace: %w", err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	f, err := os.Open(fmt.Sprintf("/proc/%d/ns/user", cmd.Process.Pid))
	if err != nil {
		return nil, fmt.Errorf("open user namespace: %w", err)
	}
	return f, nil
}

// Detached returns a detached, nosuid, nodev copy of the mount (or
// directory) at src, read-only when readOnly, as an O_PATH file: it is
// attached nowhere and lives as long as the file and its duplicates (a
// child process's too), so nothing is left to unmount. With userns it is
// idmapped through that namespace (see the package doc); kernels before
// 5.12, and file systems without idmap support, refuse. With userns nil
// its files keep the host's ids.
func Detached(src string, userns *os.File, readOnly bool) (*os.File, error) {
	fd, err := unix.OpenTree(unix.AT_FDCWD, src, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("detached mount of %s: open_tree: %w", src, err)
	}
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV}
	if readOnly {
		attr.Attr_set |= unix.MOUNT_ATTR_RDONLY
	}
	if userns != nil {
		attr.Attr_set |= unix.MOUNT_ATTR_IDMAP
		attr.Userns_fd = uint64(userns.Fd())
	}
	if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH, &attr); err != nil {
		unix.Close(fd)
		if userns != nil {
			return nil, fmt.Errorf("idmapped mount of %s (kernel 5.12+ and a file system that supports idmapped mounts needed): %w", src, err)
		}
		return nil, fmt.Errorf("detached mount of %s: mount_setattr: %w", src, err)
	}
	return os.NewFile(uintptr(fd), src), nil
}
