package vm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/kiln-build/kiln/internal/idmap"
	"golang.org/x/sys/unix"
)

// qemu runs in a user namespace of its own whose ids 0-65535 map onto a
// host range no other live guest has: root in it, with capabilities that
// act only on what its range owns, and an unprivileged id on the host. It
// reaches the run's clone and writable shares through idmapped mounts
// (files the host stores as uid k are uid k in its namespace), so 9p
// passthrough keeps the image's owners and real symlinks. The ranges lie
// above the container tier's (2^30 + n*65536, n < 2^14): range n starts at
// host id 2^31 + n*65536.
const (
	rangeBase  = 1 << 31
	rangeSize  = 1 << 16
	rangeCount = 1 << 14 // up to 2^31 + 2^30: well below uid 2^32-1
	// kvmGID is the id in qemu's namespace that the host's /dev/kvm group
	// maps to, past the range, when the guest uses KVM.
	kvmGID = rangeSize
)

// rangeDir holds one lock file per range for every kiln process on the
// host. A guest's qemu holds its range's flock (the file is its fd, read
// only), so the range is free exactly when no qemu of it is alive, even
// after its kiln process was SIGKILLed.
const rangeDir = "/run/kiln/vm-userns"

// takeRange returns the lowest range no live guest holds, locked by the
// returned file, which the caller hands to qemu and then closes.
func takeRange() (base uint32, lock *os.File, err error) {
	if err := os.MkdirAll(rangeDir, 0o700); err != nil {
		return 0, nil, fmt.Errorf("vm: user namespace ranges: %w", err)
	}
	for n := range rangeCount {
		f, err := os.OpenFile(filepath.Join(rangeDir, strconv.Itoa(n)), os.O_RDONLY|os.O_CREATE, 0o600)
		if err != nil {
			return 0, nil, fmt.Errorf("vm: user namespace ranges: %w", err)
		}
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return rangeBase + uint32(n)*rangeSize, f, nil
		}
		f.Close()
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			return 0, nil, fmt.Errorf("vm: user namespace range %d: %w", n, err)
		}
	}
	return 0, nil, fmt.Errorf("vm: all %d user namespace ranges are in use", rangeCount)
}

// userns returns the namespace the idmapped mounts of the range at base
// are made through, as a file of the caller's to close. One is made per
// range and kept (a range is reused run after run), so a run in steady
// state starts no process for it.
func (l *Launcher) userns(base uint32) (*os.File, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.ns[base]
	if f == nil {
		var err error
		if f, err = idmap.Userns(base, rangeSize); err != nil {
			return nil, fmt.Errorf("vm: %w", err)
		}
		if l.ns == nil {
			l.ns = map[uint32]*os.File{}
		}
		l.ns[base] = f
	}
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("vm: user namespace: %w", err)
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

// unprivileged makes cmd start in a new user namespace with the range at
// base mapped, as its root with no supplementary group of kiln's (host
// root's groups would otherwise stay with it); with kvm, also in the group
// of /dev/kvm, which it opens itself (Debian 12's qemu takes no KVM fd).
func unprivileged(attr *syscall.SysProcAttr, base uint32, kvm bool) error {
	m := []syscall.SysProcIDMap{{ContainerID: 0, HostID: int(base), Size: rangeSize}}
	gm := m
	var groups []uint32
	if kvm {
		var st unix.Stat_t
		if err := unix.Stat("/dev/kvm", &st); err != nil {
			return fmt.Errorf("vm: /dev/kvm: %w", err)
		}
		gm = append(gm, syscall.SysProcIDMap{ContainerID: kvmGID, HostID: int(st.Gid), Size: 1})
		groups = []uint32{kvmGID}
	}
	attr.Cloneflags |= unix.CLONE_NEWUSER
	attr.UidMappings = m
	attr.GidMappings = gm
	// setgroups stays allowed so that the child can drop kiln's groups;
	// qemu's own seccomp filter (elevateprivileges=deny) refuses it later.
	attr.GidMappingsEnableSetgroups = true
	attr.Credential = &syscall.Credential{Uid: 0, Gid: 0, Groups: groups}
	return nil
}
