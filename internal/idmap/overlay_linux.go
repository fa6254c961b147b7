package idmap

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// overlayfs cannot be idmapped itself (mount_setattr says EINVAL), but
// takes idmapped layers (kernel 5.19+): an overlay of an overlay's layers,
// through idmapped mounts of them, stands in for an idmapped mount of it.

// Layers are the layers of an overlay, as its mount options name them.
// Upper and Work are siblings.
type Layers struct {
	Lower       []string
	Upper, Work string
}

// LayersOf reads the layers of the overlay m from its mount options.
func LayersOf(m *mountinfo.Info) (Layers, error) {
	var l Layers
	for _, o := range strings.Split(m.VFSOptions, ",") {
		k, v, _ := strings.Cut(o, "=")
		switch k {
		case "lowerdir":
			l.Lower = strings.Split(v, ":")
		case "upperdir":
			l.Upper = v
		case "workdir":
			l.Work = v
		}
	}
	if m.FSType != "overlay" || len(l.Lower) == 0 || l.Upper == "" || l.Work == "" {
		return Layers{}, fmt.Errorf("overlay at %s: cannot read its layers from %s %q", m.Mountpoint, m.FSType, m.VFSOptions)
	}
	// The overlays made here reach both through one idmapped mount of
	// their parent.
	if filepath.Dir(l.Upper) != filepath.Dir(l.Work) {
		return Layers{}, fmt.Errorf("overlay at %s: upper and work dirs are not siblings", m.Mountpoint)
	}
	return l, nil
}

// WorkDir is the work dir of the overlays made with tag over l (see
// Layers.Overlay).
func (l Layers) WorkDir(tag string) string { return l.Work + "." + tag }

// Overlay is Layers.Overlay of the layers of the overlay mounted at root.
func Overlay(root, dir, tag string, base uint32, userns *os.File) (*os.File, error) {
	ms, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(root))
	if err != nil || len(ms) == 0 {
		return nil, fmt.Errorf("overlay at %s: not in the mount table (%v)", root, err)
	}
	l, err := LayersOf(ms[len(ms)-1])
	if err != nil {
		return nil, err
	}
	return l.Overlay(dir, tag, base, userns)
}

// Overlay returns, as an O_PATH file, a detached nosuid,nodev overlay of
// l, through idmapped mounts of its layers made with userns (whose ids map
// onto base..), read-only ones of the lower layers. The layers' mounts are
// attached under dir (l<N>, u; made), which the caller unmounts (a lazy
// detach of dir's own mount takes them along). The overlay has a work dir
// of its own beside l's, WorkDir(tag), made fresh: two overlays never
// share one, and a volatile overlay leaves a mark in its work dir that
// makes the next mount on it fail. The upper dir is l's own: the host must
// not use l's overlay while the returned one is in use.
func (l Layers) Overlay(dir, tag string, base uint32, userns *os.File) (*os.File, error) {
	lowers := make([]string, len(l.Lower))
	for i, src := range l.Lower {
		lowers[i] = filepath.Join(dir, fmt.Sprintf("l%d", i))
		if err := attach(src, lowers[i], userns, true); err != nil {
			return nil, err
		}
	}
	u := filepath.Join(dir, "u")
	if err := attach(filepath.Dir(l.Upper), u, userns, false); err != nil {
		return nil, err
	}
	return l.mount(lowers, u, tag, base)
}

// OverlayDetached is Overlay over detached idmapped mounts of the layers,
// named to overlayfs as /proc/self/fd/N, so nothing is attached anywhere
// (kernel 6.15+; older ones refuse). lower returns an idmapped, read-only
// mount of a lower layer (made with Detached; the caller may keep them),
// as a file this closes.
func (l Layers) OverlayDetached(tag string, base uint32, userns *os.File, lower func(src string) (*os.File, error)) (*os.File, error) {
	fdPath := func(f *os.File) string { return fmt.Sprintf("/proc/self/fd/%d", f.Fd()) }
	lowers := make([]string, len(l.Lower))
	for i, src := range l.Lower {
		f, err := lower(src)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		lowers[i] = fdPath(f)
	}
	u, err := Detached(filepath.Dir(l.Upper), userns, false)
	if err != nil {
		return nil, err
	}
	defer u.Close()
	return l.mount(lowers, fdPath(u), tag, base)
}

// mount makes the overlay of l for the ids at base, with its lower layers
// reached at lowers and its upper and work dirs in upperParent (an
// idmapped mount of their parent: they must be on one mount).
func (l Layers) mount(lowers []string, upperParent, tag string, base uint32) (*os.File, error) {
	w := l.WorkDir(tag)
	if err := os.RemoveAll(w); err != nil {
		return nil, fmt.Errorf("overlay work dir: %w", err)
	}
	if err := os.Mkdir(w, 0o700); err != nil {
		return nil, fmt.Errorf("overlay work dir: %w", err)
	}
	return mountOverlay([][2]string{{"lowerdir", strings.Join(lowers, ":")},
		{"upperdir", filepath.Join(upperParent, filepath.Base(l.Upper))},
		{"workdir", filepath.Join(upperParent, filepath.Base(w))},
		// l's own overlay holds the same upper dir; without an index
		// that is allowed.
		{"index", "off"}, {"volatile", ""}}, base)
}

// attach mounts at dst (made) an idmapped copy of src.
func attach(src, dst string, userns *os.File, readOnly bool) error {
	if err := os.Mkdir(dst, 0o700); err != nil {
		return fmt.Errorf("idmapped mount: %w", err)
	}
	return AttachAt(src, dst, userns, readOnly)
}

// AttachAt mounts at dst, which exists, Detached's copy of src.
func AttachAt(src, dst string, userns *os.File, readOnly bool) error {
	f, err := Detached(src, userns, readOnly)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.MoveMount(int(f.Fd()), "", unix.AT_FDCWD, dst, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("idmapped mount of %s: move_mount: %w", src, err)
	}
	return nil
}

// mountOverlay makes an overlay from opts (name, value; no value: a flag),
// detached, nosuid and nodev. overlayfs does its own work in the layers
// (work dir, whiteouts, copy-up, marks) with the credentials of whoever
// created it, and through the idmapped layers host uid 0 has no mapping
// (EOVERFLOW, and the overlay falls back to read-only): so it is created
// on a thread whose file system ids are base, which the layers map to the
// files' owner 0, with the file system capabilities setfsuid drops raised
// again (for its trusted.overlay.* marks and to copy up files of any
// owner). The thread is thrown away afterwards, so its credentials never
// serve anything else.
func mountOverlay(opts [][2]string, base uint32) (*os.File, error) {
	fsfd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("overlay: fsopen: %w", err)
	}
	defer unix.Close(fsfd)
	for _, o := range opts {
		if o[1] == "" {
			err = unix.FsconfigSetFlag(fsfd, o[0])
		} else {
			err = unix.FsconfigSetString(fsfd, o[0], o[1])
		}
		if err != nil {
			return nil, fmt.Errorf("overlay: option %s: %w", o[0], err)
		}
	}
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the runtime ends the thread with the goroutine.
		runtime.LockOSThread()
		errc <- func() error {
			if err := setFSIDs(int(base)); err != nil {
				return fmt.Errorf("overlay: %w", err)
			}
			if err := unix.FsconfigCreate(fsfd); err != nil {
				return fmt.Errorf("overlay: make overlay: %w", err)
			}
			return nil
		}()
	}()
	if err := <-errc; err != nil {
		return nil, err
	}
	mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV)
	if err != nil {
		return nil, fmt.Errorf("overlay: fsmount: %w", err)
	}
	return os.NewFile(uintptr(mfd), "overlay"), nil
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
