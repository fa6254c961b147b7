package linux

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// overlayfs cannot itself be mounted idmapped (mount_setattr says EINVAL),
// but it takes idmapped layers. So for a clone that is an overlay, kiln
// mounts a second overlay of the same layers for the sandbox: lower and
// upper through idmapped mounts, made and attached by kiln itself (see
// mountOverlay), without a helper process.

// overlayLayers reads the layers of the overlay mounted at root.
func overlayLayers(m *mountinfo.Info) (lower []string, upper, work string, err error) {
	for _, o := range strings.Split(m.VFSOptions, ",") {
		k, v, _ := strings.Cut(o, "=")
		switch k {
		case "lowerdir":
			lower = strings.Split(v, ":")
		case "upperdir":
			upper = v
		case "workdir":
			work = v
		}
	}
	if len(lower) == 0 || upper == "" || work == "" {
		return nil, "", "", fmt.Errorf("overlay at %s: cannot read its layers from %q", m.Mountpoint, m.VFSOptions)
	}
	return lower, upper, work, nil
}

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

// lower returns the kept idmapped mount of src for the range at base
// (making it first), as a file of the caller's own to close.
func (l *layerMounts) lower(base uint32, src string, userns *os.File) (*os.File, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.kept[base][src]
	if f == nil {
		var err error
		if f, err = idmapDetached(src, userns); err != nil {
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
// overlay of the layers of the overlay m, through idmapped mounts of them:
// detached ones (see layerMounts), or attached under dir (names starting
// "l" and "u"). The lower layers it used are added to used. The sandbox's
// overlay has a work dir of its own, beside the clone's: two overlays
// never share one.
func idmapOverlay(m *mountinfo.Info, dir, dst string, base uint32, userns *os.File, layers *layerMounts, used map[string]bool) error {
	lowers, upper, work, err := overlayLayers(m)
	if err != nil {
		return err
	}
	if filepath.Dir(upper) != filepath.Dir(work) {
		return fmt.Errorf("overlay at %s: upper and work dirs are not siblings", m.Mountpoint)
	}
	for _, l := range lowers {
		used[l] = true
	}
	mode := layers.mode()
	if mode != detachedNo {
		err := detachedOverlay(lowers, upper, work, dst, base, userns, layers)
		if err == nil {
			layers.setMode(detachedYes)
			return nil
		}
		if mode == detachedYes {
			return err
		}
		// Before 6.15 overlayfs refuses detached layers: attached ones,
		// from now on, if they work.
		if aerr := attachedOverlay(lowers, upper, work, dir, dst, base, userns); aerr != nil {
			return fmt.Errorf("%w (with detached layers: %w)", aerr, err)
		}
		layers.setMode(detachedNo)
		layers.close() // what the failed try kept
		return nil
	}
	return attachedOverlay(lowers, upper, work, dir, dst, base, userns)
}

// sandboxWorkDir makes the sandbox overlay's work dir beside the clone's,
// fresh every time: a volatile overlay leaves a mark in its work dir that
// makes the next mount on it fail.
func sandboxWorkDir(work string) (string, error) {
	w := work + sandboxWorkSuffix
	if err := os.RemoveAll(w); err != nil {
		return "", fmt.Errorf("overlay work dir: %w", err)
	}
	if err := os.Mkdir(w, 0o700); err != nil {
		return "", fmt.Errorf("overlay work dir: %w", err)
	}
	return w, nil
}

// overlayOpts are the sandbox overlay's options, for layers reached at
// lowers and, for upper and work, in upperParent.
func overlayOpts(lowers []string, upperParent, upper, work string) [][2]string {
	return [][2]string{{"lowerdir", strings.Join(lowers, ":")},
		{"upperdir", filepath.Join(upperParent, filepath.Base(upper))},
		{"workdir", filepath.Join(upperParent, filepath.Base(work))},
		// The clone's own overlay holds the same upper dir; without an
		// index that is allowed (the host reads the clone only before
		// the sandbox starts or after it has ended).
		{"index", "off"}, {"volatile", ""}}
}

// detachedOverlay makes the sandbox overlay over detached idmapped mounts,
// named to overlayfs as /proc/self/fd/N.
func detachedOverlay(lowers []string, upper, work, dst string, base uint32, userns *os.File, layers *layerMounts) error {
	fdPath := func(f *os.File) string { return fmt.Sprintf("/proc/self/fd/%d", f.Fd()) }
	var ls []string
	for _, l := range lowers {
		f, err := layers.lower(base, l, userns)
		if err != nil {
			return err
		}
		defer f.Close()
		ls = append(ls, fdPath(f))
	}
	// Upper and work must be on one mount: idmap their parent.
	u, err := idmapDetached(filepath.Dir(upper), userns)
	if err != nil {
		return err
	}
	defer u.Close()
	w, err := sandboxWorkDir(work)
	if err != nil {
		return err
	}
	return mountOverlay(overlayOpts(ls, fdPath(u), upper, w), dst, base)
}

// attachedOverlay makes the sandbox overlay over idmapped mounts attached
// under dir.
func attachedOverlay(lowers []string, upper, work, dir, dst string, base uint32, userns *os.File) error {
	var ls []string
	for i, l := range lowers {
		p := filepath.Join(dir, fmt.Sprintf("l%d", i))
		if err := mkIDMap(l, p, userns); err != nil {
			return err
		}
		ls = append(ls, p)
	}
	u := filepath.Join(dir, "u")
	if err := mkIDMap(filepath.Dir(upper), u, userns); err != nil {
		return err
	}
	w, err := sandboxWorkDir(work)
	if err != nil {
		return err
	}
	return mountOverlay(overlayOpts(ls, u, upper, w), dst, base)
}

func mkIDMap(src, dst string, userns *os.File) error {
	if err := os.Mkdir(dst, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("idmapped mounts: %w", err)
	}
	return idmapAt(src, dst, userns)
}

// mountOverlay makes an overlay from opts (name, value; no value: a flag)
// and attaches it at dst, nosuid and nodev. overlayfs does its own work in
// the layers (work dir, whiteouts, copy-up, marks) with the credentials of
// whoever created it, and through the idmapped layers host uid 0 has no
// mapping (EOVERFLOW, and the overlay falls back to read-only): so it is
// created on a thread whose file system ids are the sandbox root's, base,
// which the layers map to the files' owner 0. setfsuid drops the file
// system capabilities from the thread's effective set; they are raised
// again, as the overlay needs them for its marks (trusted.overlay.*, the
// same as the clone's own overlay reads) and to copy up files of any owner.
// The thread is thrown away afterwards, so its credentials never serve
// anything else.
func mountOverlay(opts [][2]string, dst string, base uint32) error {
	fsfd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("sandbox overlay: fsopen: %w", err)
	}
	defer unix.Close(fsfd)
	for _, o := range opts {
		if o[1] == "" {
			err = unix.FsconfigSetFlag(fsfd, o[0])
		} else {
			err = unix.FsconfigSetString(fsfd, o[0], o[1])
		}
		if err != nil {
			return fmt.Errorf("sandbox overlay: option %s: %w", o[0], err)
		}
	}
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the runtime ends the thread with the goroutine.
		runtime.LockOSThread()
		errc <- func() error {
			if err := setFSIDs(int(base)); err != nil {
				return fmt.Errorf("sandbox overlay: %w", err)
			}
			if err := unix.FsconfigCreate(fsfd); err != nil {
				return fmt.Errorf("sandbox overlay: make overlay: %w", err)
			}
			return nil
		}()
	}()
	if err := <-errc; err != nil {
		return err
	}
	mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV)
	if err != nil {
		return fmt.Errorf("sandbox overlay: fsmount: %w", err)
	}
	defer unix.Close(mfd)
	if err := unix.MoveMount(mfd, "", unix.AT_FDCWD, dst, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("attach sandbox overlay at %s: %w", dst, err)
	}
	return nil
}

// setFSIDs sets the calling thread's file system uid and gid to id and
// raises its effective capabilities to its permitted ones again.
func setFSIDs(id int) error {
	if err := unix.Setfsgid(id); err != nil {
		return fmt.Errorf("setfsgid: %w", err)
	}
	if err := unix.Setfsuid(id); err != nil {
		return fmt.Errorf("setfsuid: %w", err)
	}
	// setfs[ug]id report no failure; read them back.
	if got, _ := unix.SetfsuidRetUid(-1); got != id {
		return fmt.Errorf("setfsuid %d: still %d", id, got)
	}
	if got, _ := unix.SetfsgidRetGid(-1); got != id {
		return fmt.Errorf("setfsgid %d: still %d", id, got)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var caps [2]unix.CapUserData
	if err := unix.Capget(&hdr, &caps[0]); err != nil {
		return fmt.Errorf("capget: %w", err)
	}
	for i := range caps {
		caps[i].Effective = caps[i].Permitted
	}
	if err := unix.Capset(&hdr, &caps[0]); err != nil {
		return fmt.Errorf("capset: %w", err)
	}
	return nil
}
