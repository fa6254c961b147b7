package linux

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// overlayfs cannot itself be mounted idmapped (mount_setattr says EINVAL),
// but it takes idmapped layers when it is mounted inside a user namespace.
// So for a clone that is an overlay, kiln mounts a second overlay of the
// same layers for the sandbox: lower and upper through idmapped mounts, the
// overlay made (fsopen/fsmount) by a helper process inside a user namespace
// with the sandbox's mapping, and the finished mount handed back as a file
// descriptor and attached by kiln. The helper is this very binary, started
// with overlayHelperEnv set; this package's init runs it before main.
const overlayHelperEnv = "_KILN_USERNS_OVERLAY"

func init() {
	if opts, ok := os.LookupEnv(overlayHelperEnv); ok {
		if err := overlayHelper(opts); err != nil {
			fmt.Fprintln(os.Stderr, "kiln overlay helper:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
}

// overlayHelper runs in the helper process: it makes a detached overlay
// mount from opts ("key=value" lines) and sends its descriptor on fd 3.
func overlayHelper(opts string) error {
	sock := os.NewFile(3, "socket")
	fsfd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("fsopen overlay: %w", err)
	}
	for _, kv := range strings.Split(opts, "\n") {
		k, v, _ := strings.Cut(kv, "=")
		if k == "" {
			continue
		}
		if v == "" {
			err = unix.FsconfigSetFlag(fsfd, k)
		} else {
			err = unix.FsconfigSetString(fsfd, k, v)
		}
		if err != nil {
			return fmt.Errorf("overlay option %s: %w", k, err)
		}
	}
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return fmt.Errorf("make overlay: %w", err)
	}
	mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV)
	if err != nil {
		return fmt.Errorf("fsmount overlay: %w", err)
	}
	return unix.Sendmsg(int(sock.Fd()), []byte{0}, unix.UnixRights(mfd), nil, 0)
}

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

// idmapOverlay mounts at dst, for a sandbox whose ids map onto base, an
// overlay of the layers of the overlay m, with idmapped copies of them
// under dir (names starting "l" and "u"). The sandbox's overlay has a work
// dir of its own, beside the clone's: two overlays never share one.
func idmapOverlay(m *mountinfo.Info, dir, dst string, base uint32, userns *os.File) error {
	lowers, upper, work, err := overlayLayers(m)
	if err != nil {
		return err
	}
	if filepath.Dir(upper) != filepath.Dir(work) {
		return fmt.Errorf("overlay at %s: upper and work dirs are not siblings", m.Mountpoint)
	}
	var ls []string
	for i, l := range lowers {
		p := filepath.Join(dir, fmt.Sprintf("l%d", i))
		if err := mkIDMap(l, p, userns); err != nil {
			return err
		}
		ls = append(ls, p)
	}
	// Upper and work must be on one mount: idmap their parent.
	// Fresh every time: a volatile overlay leaves a mark in its work dir
	// that makes the next mount on it fail.
	sandboxWork := work + ".sandbox"
	if err := os.RemoveAll(sandboxWork); err != nil {
		return fmt.Errorf("overlay work dir: %w", err)
	}
	if err := os.Mkdir(sandboxWork, 0o700); err != nil {
		return fmt.Errorf("overlay work dir: %w", err)
	}
	u := filepath.Join(dir, "u")
	if err := mkIDMap(filepath.Dir(upper), u, userns); err != nil {
		return err
	}
	opts := []string{"lowerdir=" + strings.Join(ls, ":"),
		"upperdir=" + filepath.Join(u, filepath.Base(upper)),
		"workdir=" + filepath.Join(u, filepath.Base(sandboxWork)),
		// The clone's own overlay holds the same upper dir; without an
		// index that is allowed (the host reads the clone only before
		// the sandbox starts or after it has ended).
		"index=off", "volatile",
		// Marks (impure, opaque) as user.overlay.* xattrs, which the
		// sandbox's namespace may set: without them overlayfs answers
		// EXDEV to renaming even a new directory into a lower one, and
		// dpkg, which does that for every directory it unpacks, fails.
		// Snapshots are single-layer trees, so no trusted.overlay.* mark
		// of a lower layer goes unread.
		"userxattr"}
	return helperOverlay(strings.Join(opts, "\n"), dst, base)
}

func mkIDMap(src, dst string, userns *os.File) error {
	if err := os.Mkdir(dst, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("idmapped mounts: %w", err)
	}
	return idmapAt(src, dst, userns)
}

// helperOverlay runs the overlay helper in a new user and mount namespace
// mapped onto base and attaches the mount it returns at dst.
func helperOverlay(opts, dst string, base uint32) error {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("overlay helper: %w", err)
	}
	ours, theirs := os.NewFile(uintptr(fds[0]), "ours"), os.NewFile(uintptr(fds[1]), "theirs")
	defer ours.Close()
	m := []syscall.SysProcIDMap{{ContainerID: 0, HostID: int(base), Size: usernsSize}}
	cmd := exec.Command("/proc/self/exe")
	cmd.Env = []string{overlayHelperEnv + "=" + opts}
	cmd.ExtraFiles = []*os.File{theirs}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  unix.CLONE_NEWUSER | unix.CLONE_NEWNS,
		UidMappings: m,
		GidMappings: m,
		// Root of the new namespace (host uid base), so that it holds
		// CAP_SYS_ADMIN there after the exec; host root is not mapped.
		Credential: &syscall.Credential{Uid: 0, Gid: 0, NoSetGroups: true},
		Pdeathsig:  unix.SIGKILL,
	}
	err = cmd.Run()
	theirs.Close()
	if err != nil {
		return fmt.Errorf("overlay helper: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	buf, oob := make([]byte, 1), make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := unix.Recvmsg(int(ours.Fd()), buf, oob, unix.MSG_DONTWAIT)
	if err != nil {
		return fmt.Errorf("overlay helper: receive mount: %w", err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return fmt.Errorf("overlay helper: no mount received: %v", err)
	}
	rights, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(rights) != 1 {
		return fmt.Errorf("overlay helper: no mount received: %v", err)
	}
	defer unix.Close(rights[0])
	if err := unix.MoveMount(rights[0], "", unix.AT_FDCWD, dst, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("attach sandbox overlay at %s: %w", dst, err)
	}
	return nil
}
