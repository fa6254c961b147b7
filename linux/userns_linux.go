package linux

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"unsafe"

	"github.com/containerd/containerd"
	"github.com/moby/sys/mountinfo"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/internal/idmap"
	"github.com/kiln-build/kiln/sandbox"
)

// Each container-tier sandbox runs in a user namespace whose ids 0-65535
// map onto a host range of its own (like podman's --userns=auto): range n
// is usernsBase + n*usernsSize. The base sits far above the uids of real
// users and of /etc/subuid's usual 100000-based ranges.
const (
	usernsBase   = 1 << 30
	usernsSize   = idmap.RangeSize
	usernsRanges = 1 << 14 // up to 2^30 + 2^30: well below uid 2^32-1
)

// Labels recording a container's id range and the directory of the
// idmapped mounts made for it, so that Delete and Reap, in this process or
// a later one, can undo them.
const (
	LabelUserns = "kiln.userns"
	LabelIDMaps = "kiln.idmaps"
	// LabelSandboxWork lists (one a line) the work dirs of the overlays
	// made for the sandbox (see idmapOverlay), removed with its idmapped
	// mounts.
	LabelSandboxWork = "kiln.sandbox-work"
)

// UsernsDir holds one file per id range in use ("<n>": the owner, then the
// container that holds it); the directory is shared by every kiln process
// on the host (all containerd daemons and namespaces), so no two live
// sandboxes share a range.
const UsernsDir = runDir + "/userns"

// idmapDir holds each sandbox's idmapped mounts, in a directory per
// container (see sandboxRootDir). The directories on the way are
// traversable (0711): runc sets up the root and bind mounts as the
// sandbox's root, an unprivileged host uid that could not reach the clone
// or the run's directory where they are.
const idmapDir = runDir + "/idmap"

// sandboxRootDir makes dir, which holds a container's idmapped mounts,
// 0710 root and the group of the container's root (host gid base), as
// containerd does a bundle: runc's init, which sets up the mounts as the
// sandbox's root, can reach them, and no other host user can (the mounts'
// own modes are the image's, 0755 for the root). No host user owns a
// range's ids. It is made 0700 first, so it is never open to others, and
// its mode and group are set again when it exists already.
func sandboxRootDir(dir string, base uint32) error {
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("idmapped mounts: %w", err)
	}
	if err := os.Chown(dir, 0, int(base)); err != nil {
		return fmt.Errorf("idmapped mounts: %w", err)
	}
	if err := os.Chmod(dir, 0o710); err != nil {
		return fmt.Errorf("idmapped mounts: %w", err)
	}
	return nil
}

// runDir holds kiln's host-wide state that goes with a boot: id ranges,
// idmapped mounts, the runsc wrapper.
const runDir = "/run/kiln"

// prepareRunDir makes runDir traversable by every sandbox's root (see
// idmapDir); what is in it is root's alone.
func prepareRunDir() error {
	if err := os.MkdirAll(runDir, 0o711); err != nil {
		return fmt.Errorf("prepare %s: %w", runDir, err)
	}
	if err := os.Chmod(runDir, 0o711); err != nil {
		return fmt.Errorf("prepare %s: %w", runDir, err)
	}
	return nil
}

// idMapping maps a sandbox's ids 0-65535 onto the host range at base.
func idMapping(base uint32) []specs.LinuxIDMapping {
	return []specs.LinuxIDMapping{{ContainerID: 0, HostID: base, Size: usernsSize}}
}

// removeIDMaps unmounts what Containerd.userns mounted in dir and removes
// dir. Everything there is kiln's: mount points, and a cache layer's
// directory ("m<N>") of mount points, one level deep. It knows them by
// name, so it needs no read of the mount table, which costs in proportion
// to every mount on the host. Each entry is detached before it is removed,
// and only ever with a single rmdir, so nothing is deleted through a mount.
func removeIDMaps(dir string) error {
	if dir == "" {
		return nil
	}
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("idmapped mounts: %w", err)
	}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		if e.IsDir() && strings.HasPrefix(e.Name(), "m") {
			sub, err := os.ReadDir(p)
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("idmapped mounts: %w", err)
			}
			for _, se := range sub {
				if err := detachAndRemove(filepath.Join(p, se.Name())); err != nil {
					return err
				}
			}
		}
		if err := detachAndRemove(p); err != nil {
			return err
		}
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("idmapped mounts: %w", err)
	}
	return nil
}

// detachAndRemove detaches every mount stacked at p and removes p (an
// empty directory once nothing is mounted on it). Detached lazily: nothing
// uses them once the container is gone, and a plain unmount waits for the
// kernel's RCU grace period, once per mount, which a run would pay for.
func detachAndRemove(p string) error {
	for i := 0; ; i++ {
		err := unix.Unmount(p, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW)
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			break // no (more) mount at p
		}
		if err != nil {
			return fmt.Errorf("unmount %s: %w", p, err)
		}
		if i == 64 {
			return fmt.Errorf("unmount %s: still mounted after %d unmounts", p, i+1)
		}
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("idmapped mounts: %w", err)
	}
	return nil
}

// overlayMounts returns the uppermost mount at each of paths that is the
// root of an overlay. Each path is asked about on its own (statfs, then
// statx and statmount, kernel 6.11+); only where the kernel cannot answer
// is the mount table read, once: it has a line for every mount on the
// host, and reading it cost a run about 1 ms here.
func overlayMounts(paths []string) (map[string]*mountinfo.Info, error) {
	out := map[string]*mountinfo.Info{}
	want := map[string]bool{}
	for _, p := range paths {
		var st unix.Statfs_t
		if err := unix.Statfs(p, &st); err != nil {
			return nil, fmt.Errorf("statfs %s: %w", p, err)
		}
		if st.Type != unix.OVERLAYFS_SUPER_MAGIC {
			continue
		}
		m, known, err := statOverlay(p)
		if err != nil {
			return nil, err
		}
		switch {
		case !known:
			want[p] = true
		case m != nil:
			out[p] = m
		}
	}
	if len(want) == 0 {
		return out, nil
	}
	ms, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) {
		return !want[m.Mountpoint], false
	})
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	at := map[string][]*mountinfo.Info{}
	for _, m := range ms {
		at[m.Mountpoint] = append(at[m.Mountpoint], m)
	}
	for p, ms := range at {
		if top := topOf(ms); top.FSType == "overlay" {
			out[p] = top
		}
	}
	return out, nil
}

// statmount(2)'s request (MNT_ID_REQ_SIZE_VER0) and the parts of its
// answer kiln reads: struct statmount is a 512-byte header whose string
// fields are offsets into the strings after it.
type mntIDReq struct {
	size   uint32
	spare  uint32
	mntID  uint64
	params uint64
}

const (
	statmountMntOpts   = 0x80 // STATMOUNT_MNT_OPTS
	statmountFSType    = 0x20 // STATMOUNT_FS_TYPE
	statmountHeader    = 512
	statmountOffMask   = 8
	statmountOffOpts   = 4
	statmountOffFSType = 36
)

// statOverlay reads the top mount at p when it is the root of an overlay
// (nil when p is no mount root, or the mount is not an overlay), with its
// file system options, without the mount table. known is false where the
// kernel cannot say (before 6.11); the caller then reads the mount table.
func statOverlay(p string) (m *mountinfo.Info, known bool, err error) {
	var stx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, p, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_MNT_ID_UNIQUE, &stx); err != nil {
		return nil, false, fmt.Errorf("statx %s: %w", p, err)
	}
	if stx.Mask&unix.STATX_MNT_ID_UNIQUE == 0 || stx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT == 0 {
		return nil, false, nil
	}
	if stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT == 0 {
		return nil, true, nil
	}
	req := mntIDReq{size: uint32(unsafe.Sizeof(mntIDReq{})), mntID: stx.Mnt_id, params: statmountMntOpts | statmountFSType}
	buf := make([]byte, 16<<10)
	for {
		_, _, errno := unix.Syscall6(unix.SYS_STATMOUNT, uintptr(unsafe.Pointer(&req)), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)), 0, 0, 0)
		if errno == unix.EOVERFLOW && len(buf) < 1<<20 {
			buf = make([]byte, 4*len(buf))
			continue
		}
		if errno == unix.ENOSYS || errno == unix.EINVAL {
			return nil, false, nil // before 6.8, or a mask it does not know
		}
		if errno != 0 {
			return nil, false, fmt.Errorf("statmount %s: %w", p, errno)
		}
		break
	}
	if binary.NativeEndian.Uint64(buf[statmountOffMask:])&(statmountMntOpts|statmountFSType) != statmountMntOpts|statmountFSType {
		return nil, false, nil
	}
	size := min(int(binary.NativeEndian.Uint32(buf)), len(buf))
	str := func(off int) string {
		at := statmountHeader + int(binary.NativeEndian.Uint32(buf[off:]))
		if at >= size {
			return ""
		}
		s := buf[at:size]
		if i := bytes.IndexByte(s, 0); i >= 0 {
			s = s[:i]
		}
		return string(s)
	}
	if str(statmountOffFSType) != "overlay" {
		return nil, true, nil
	}
	return &mountinfo.Info{Mountpoint: p, FSType: "overlay", VFSOptions: str(statmountOffOpts)}, true, nil
}

// topOf returns the uppermost of the mounts ms at one mount point: the
// one no other of them is mounted on.
func topOf(ms []*mountinfo.Info) *mountinfo.Info {
	for _, m := range ms {
		over := false
		for _, o := range ms {
			over = over || o.Parent == m.ID
		}
		if !over {
			return m
		}
	}
	return ms[len(ms)-1]
}

// usernsOf reads the id range recorded on a container (0: none).
func usernsOf(labels map[string]string) uint32 {
	n, err := strconv.ParseUint(labels[LabelUserns], 10, 32)
	if err != nil {
		return 0
	}
	return uint32(n)
}

// undoUserns unmounts a container's idmapped mounts and frees its range,
// whichever owner's container it is (`kiln host gc` removes those of
// other owners).
func (c *Containerd) undoUserns(ctx context.Context, ctr containerd.Container) error {
	labels, err := ctr.Labels(ctx)
	if err != nil {
		return fmt.Errorf("labels of %s: %w", ctr.ID(), err)
	}
	return c.undoUsernsOf(ctr.ID(), labels)
}

// undoUsernsOf is undoUserns of container id with labels.
func (c *Containerd) undoUsernsOf(id string, labels map[string]string) error {
	if err := removeIDMaps(labels[LabelIDMaps]); err != nil {
		return err
	}
	// The overlays are detached: their work dirs are of no more use, and
	// removing them here (beside runc's delete, see Delete) spares the
	// clone's destroy, on the run's path, their removal.
	for _, w := range strings.Split(labels[LabelSandboxWork], "\n") {
		if filepath.IsAbs(w) && strings.HasSuffix(w, sandboxWorkSuffix) {
			if err := os.RemoveAll(w); err != nil {
				return fmt.Errorf("sandbox overlay work dir: %w", err)
			}
		}
	}
	ranges := c.ranges
	if o := labels[LabelOwner]; o != "" {
		ranges = ranges.of(o)
	}
	ranges.release(usernsOf(labels), id)
	return nil
}

// userns gives the sandbox of container id a host id range of its own,
// and makes idmapped copies of its root and its writable bind mounts, so
// the files keep their image ownership inside while the sandbox's root is
// an unprivileged host uid. It points spec at the copies and records both
// in labels; undo takes them back.
//
// The copies' paths are known before they are made, so userns returns
// with spec and labels complete and the copies still to make: mount makes
// them, and the caller runs it while containerd records the container,
// which only stores the paths (about 1.5 ms of mounting off a run's start,
// docs/benchmarks.md). Nothing may use the paths before mount has
// returned nil, and undo must not run while mount does; once mount has
// returned, whatever it returned, undo takes back what it made.
//
// The range's record stays held (see idRanges.acquire) until settled is
// called, which the caller does once the container exists or has failed.
func (c *Containerd) userns(ctx context.Context, id string, spec *sandbox.Spec, labels map[string]string) (mount func() error, undo, settled func(), err error) {
	base, hold, err := c.ranges.acquire(ctx, id, c.containerIDs)
	if err != nil {
		return nil, nil, nil, err
	}
	settled = func() { hold.Close() }
	dir := c.ranges.idmapsOf(c.ranges.owner, id)
	undo = func() {
		if err := removeIDMaps(dir); err != nil {
			c.log.Error("undo idmapped mounts", "container", id, "err", err)
			return
		}
		c.ranges.release(base, id)
	}
	if err := os.Mkdir(idmapDir, 0o711); err != nil && !errors.Is(err, fs.ErrExist) {
		undo()
		settled()
		return nil, nil, nil, fmt.Errorf("idmapped mounts: %w", err)
	}
	steps, works, err := c.idmapSteps(dir, base, spec)
	if err != nil {
		undo()
		settled()
		return nil, nil, nil, err
	}
	mount = func() error {
		userns, err := c.nsFiles.Get(base)
		if err != nil {
			return err
		}
		defer userns.Close()
		used := map[string]bool{} // lower layers kept for the range's next run
		for _, step := range steps {
			if err := step(userns, used); err != nil {
				return err
			}
		}
		c.layers.keepOnly(base, used)
		return nil
	}
	labels[LabelUserns] = strconv.FormatUint(uint64(base), 10)
	labels[LabelIDMaps] = dir
	if len(works) > 0 {
		labels[LabelSandboxWork] = strings.Join(works, "\n")
	}
	return mount, undo, settled, nil
}

// idmapStep makes one idmapped copy of a source, at a path the spec
// already names, through the user namespace userns; used collects the
// lower layers it uses (see layerMounts).
type idmapStep func(userns *os.File, used map[string]bool) error

// idmapSteps points spec's root and writable mounts at their idmapped
// copies in dir, for the range at base, and returns the steps that make
// them and the work dirs of the sandbox overlays among them.
func (c *Containerd) idmapSteps(dir string, base uint32, spec *sandbox.Spec) (steps []idmapStep, works []string, err error) {
	if err := sandboxRootDir(dir, base); err != nil {
		return nil, nil, err
	}
	paths := []string{spec.Root}
	for _, m := range spec.Mounts {
		if !m.ReadOnly {
			paths = append(paths, m.Source)
		}
	}
	overlays, err := overlayMounts(paths)
	if err != nil {
		return nil, nil, err
	}
	root := filepath.Join(dir, "0")
	if top := overlays[spec.Root]; top != nil {
		// overlayfs cannot be idmapped itself; see idmapOverlay.
		l, err := idmap.LayersOf(top)
		if err != nil {
			return nil, nil, err
		}
		works = append(works, l.WorkDir(sandboxTag))
		steps = append(steps, func(userns *os.File, used map[string]bool) error {
			if err := os.Mkdir(root, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("idmapped mounts: %w", err)
			}
			return idmapOverlay(l, dir, root, base, userns, c.layers, used)
		})
	} else {
		src := spec.Root
		steps = append(steps, func(userns *os.File, _ map[string]bool) error { return mkIDMap(src, root, userns) })
	}
	spec.Root = root
	spec.Mounts = slices.Clone(spec.Mounts)
	for i, m := range spec.Mounts {
		// Read-only mounts (/in, host tools) stay plain binds: their
		// files show as nobody's inside, and stay readable.
		if m.ReadOnly {
			continue
		}
		mt := overlays[m.Source]
		if mt == nil {
			src, dst := m.Source, filepath.Join(dir, strconv.Itoa(i+1))
			steps = append(steps, func(userns *os.File, _ map[string]bool) error { return mkIDMap(src, dst, userns) })
			spec.Mounts[i].Source = dst
			continue
		}
		// A run's layer of a cache (sandbox caches): an overlay, which
		// cannot be idmapped itself; remade over idmapped layers like the
		// root, in a directory of its own.
		sub := filepath.Join(dir, "m"+strconv.Itoa(i+1))
		dst := filepath.Join(sub, "root")
		l, err := idmap.LayersOf(mt)
		if err != nil {
			return nil, nil, err
		}
		works = append(works, l.WorkDir(sandboxTag))
		steps = append(steps, func(userns *os.File, used map[string]bool) error {
			// Traversable: runc, as the sandbox's root, must reach dst;
			// dir keeps everyone else out.
			for _, d := range []struct {
				path string
				mode os.FileMode
			}{{sub, 0o711}, {dst, 0o700}} {
				if err := os.Mkdir(d.path, d.mode); err != nil && !errors.Is(err, fs.ErrExist) {
					return fmt.Errorf("idmapped mounts: %w", err)
				}
			}
			return idmapOverlay(l, sub, dst, base, userns, c.layers, used)
		})
		spec.Mounts[i].Source = dst
	}
	return steps, works, nil
}
