package linux

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/internal/idmap"
)

// overlayfs cannot itself be mounted idmapped (mount_setattr says EINVAL),
// but it takes idmapped layers. So for a clone that is an overlay, kiln
// mounts a second overlay of the same layers for the sandbox: lower and
// upper through idmapped mounts, made and attached by kiln itself (see
// idmap.Layers.Overlay), without a helper process.

// sandboxTag names the sandbox overlay's work dir, beside the clone's own
// (see idmap.Layers.WorkDir); sandboxWorkSuffix ends it, and undo removes
// only paths that end so.
const (
	sandboxTag        = "sandbox"
	sandboxWorkSuffix = "." + sandboxTag
)

// layerMounts holds the idmapped mounts of image layers that runs of one
// id range share. On kernels that take detached mounts as overlay layers
// (6.15+), a lower layer's idmapped mount is made once per range and
// image version and kept, detached (an open file, attached nowhere: nothing
// to unmount, nothing left behind by a crash), and the upper's is made
// detached per run; older kernels get attached mounts in the run's idmap
// directory, found out by the first overlay made.
type layerMounts struct {
	mu       sync.Mutex
	detached int                            // detachedUnknown, detachedYes or detachedNo
	kept     map[uint32]map[string]*os.File // range -> lower layer -> mount
}

const (
	detachedUnknown = iota
	detachedYes
	detachedNo
)

func (l *layerMounts) mode() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.detached
}

func (l *layerMounts) setMode(m int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.detached = m
}

// lower returns the kept idmapped, read-only mount of src for the range
// at base (making it first), as a file of the caller's own to close.
func (l *layerMounts) lower(base uint32, src string, userns *os.File) (*os.File, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.kept[base][src]
	if f == nil {
		var err error
		if f, err = idmap.Detached(src, userns, true); err != nil {
			return nil, err
		}
		if l.kept == nil {
			l.kept = map[uint32]map[string]*os.File{}
		}
		if l.kept[base] == nil {
			l.kept[base] = map[string]*os.File{}
		}
		l.kept[base][src] = f
	}
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("idmapped mount of %s: %w", src, err)
	}
	return os.NewFile(uintptr(fd), src), nil
}

// keepOnly drops the range's kept layers that are not in used (the layers
// of its latest run: an image's new version replaces the old one's).
func (l *layerMounts) keepOnly(base uint32, used map[string]bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for src, f := range l.kept[base] {
		if !used[src] {
			f.Close()
			delete(l.kept[base], src)
		}
	}
}

// close drops every kept layer.
func (l *layerMounts) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for base, m := range l.kept {
		for _, f := range m {
			f.Close()
		}
		delete(l.kept, base)
	}
}

// idmapOverlay mounts at dst, for a sandbox whose ids map onto base, an
// overlay of the layers l, through idmapped mounts of them: detached ones
// (see layerMounts), or attached under dir (names starting "l" and "u").
// The lower layers it used are added to used. The sandbox's overlay has a
// work dir of its own, beside the clone's: two overlays never share one.
func idmapOverlay(l idmap.Layers, dir, dst string, base uint32, userns *os.File, layers *layerMounts, used map[string]bool) error {
	for _, src := range l.Lower {
		used[src] = true
	}
	detached := func() error {
		f, err := l.OverlayDetached(sandboxTag, base, userns, func(src string) (*os.File, error) {
			return layers.lower(base, src, userns)
		})
		return attachOverlay(f, err, dst)
	}
	attached := func() error {
		f, err := l.Overlay(dir, sandboxTag, base, userns)
		return attachOverlay(f, err, dst)
	}
	mode := layers.mode()
	if mode == detachedNo {
		return attached()
	}
	err := detached()
	if err == nil {
		layers.setMode(detachedYes)
		return nil
	}
	if mode == detachedYes {
		return err
	}
	// Before 6.15 overlayfs refuses detached layers: attached ones, from
	// now on, if they work.
	if aerr := attached(); aerr != nil {
		return fmt.Errorf("%w (with detached layers: %w)", aerr, err)
	}
	layers.setMode(detachedNo)
	layers.close() // what the failed try kept
	return nil
}

// attachOverlay attaches at dst the overlay f, made with err, and closes
// it.
func attachOverlay(f *os.File, err error, dst string) error {
	if err != nil {
		return fmt.Errorf("sandbox overlay: %w", err)
	}
	defer f.Close()
	if err := unix.MoveMount(int(f.Fd()), "", unix.AT_FDCWD, dst, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("attach sandbox overlay at %s: %w", dst, err)
	}
	return nil
}

// mkIDMap mounts at dst (made if need be) an idmapped, nosuid, nodev copy
// of the mount (or directory) at src, seen through userns: files the host
// stores as uid k appear as base+k there, and a sandbox's root (host uid
// base) writes files the host stores as uid 0.
func mkIDMap(src, dst string, userns *os.File) error {
	if err := os.Mkdir(dst, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("idmapped mounts: %w", err)
	}
	return idmap.AttachAt(src, dst, userns, false)
}
