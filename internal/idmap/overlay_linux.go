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

// Overlay returns, as an O_PATH file, a detached nosuid,nodev overlay of
// the layers of the overlay mounted at root, through idmapped mounts of
// them made with userns (whose ids map onto base..): overlayfs cannot be
// idmapped itself (mount_setattr says EINVAL), but takes idmapped layers
// (kernel 5.19+). The layers' mounts are attached under dir (l<N>, u),
// which the caller unmounts (a lazy detach of dir's own mount takes them
// along); the overlay has a work dir of its own beside root's, work.<tag>,
// made fresh: two overlays never share one. The upper dir is root's own:
// the host must not use root while the returned overlay is in use.
func Overlay(root, dir, tag string, base uint32, userns *os.File) (*os.File, error) {
	ms, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(root))
	if err != nil || len(ms) == 0 {
		return nil, fmt.Errorf("overlay at %s: not in the mount table (%v)", root, err)
	}
	lowers, upper, work, err := layers(ms[len(ms)-1])
	if err != nil {
		return nil, err
	}
	for i, l := range lowers {
		p := filepath.Join(dir, fmt.Sprintf("l%d", i))
		if err := attach(l, p, userns, true); err != nil {
			return nil, err
		}
		lowers[i] = p
	}
	// Upper and work must be on one mount: idmap their parent.
	u := filepath.Join(dir, "u")
	if err := attach(filepath.Dir(upper), u, userns, false); err != nil {
		return nil, err
	}
	w := work + "." + tag
	if err := os.RemoveAll(w); err != nil {
		return nil, fmt.Errorf("overlay work dir: %w", err)
	}
	if err := os.Mkdir(w, 0o700); err != nil {
		return nil, fmt.Errorf("overlay work dir: %w", err)
	}
	return mountOverlay([][2]string{{"lowerdir", strings.Join(lowers, ":")},
		{"upperdir", filepath.Join(u, filepath.Base(upper))},
		{"workdir", filepath.Join(u, filepath.Base(w))},
		// root's own overlay holds the same upper dir; without an index
		// that is allowed.
		{"index", "off"}, {"volatile", ""}}, base)
}

// layers reads the layers of an overlay from its mount options.
func layers(m *mountinfo.Info) (lower []string, upper, work string, err error) {
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
	if m.FSType != "overlay" || len(lower) == 0 || upper == "" || work == "" {
		return nil, "", "", fmt.Errorf("overlay at %s: cannot read its layers from %s %q", m.Mountpoint, m.FSType, m.VFSOptions)
	}
	return lower, upper, work, nil
}

// attach mounts at dst (made) an idmapped copy of src.
func attach(src, dst string, userns *os.File, readOnly bool) error {
	if err := os.Mkdir(dst, 0o700); err != nil {
		return fmt.Errorf("idmapped mount: %w", err)
	}
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
// created it, and through the idmapped layers host uid 0 has no mapping:
// so it is created on a thread whose file system ids are base, which the
// layers map to the files' owner 0, with the file system capabilities
// setfsuid drops raised again (for its trusted.overlay.* marks and to copy
// up files of any owner). The thread is thrown away afterwards.
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
