package linux

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"unsafe"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
	"github.com/kiln-build/kiln/linux/treestore"
)

// TestBtrfsIoctlNumbers derives the denied requests again from
// linux/btrfs.h's definitions and the structs' sizes.
func TestBtrfsIoctlNumbers(t *testing.T) {
	type volArgs struct { // struct btrfs_ioctl_vol_args
		_ int64      // fd
		_ [4088]byte // name
	}
	type volArgsV2 struct { // struct btrfs_ioctl_vol_args_v2
		_ int64      // fd
		_ uint64     // transid
		_ uint64     // flags
		_ [4]uint64  // union with { size; qgroup_inherit * }
		_ [4040]byte // name
	}
	iow := func(nr, size uintptr) uint32 {
		const iocWrite = 1
		return uint32(iocWrite<<30 | size<<16 | 0x94<<8 | nr)
	}
	v1, v2 := unsafe.Sizeof(volArgs{}), unsafe.Sizeof(volArgsV2{})
	if v1 != 4096 || v2 != 4096 {
		t.Fatalf("vol_args %d bytes, vol_args_v2 %d; linux/btrfs.h has 4096 for both", v1, v2)
	}
	tests := []struct {
		name string
		got  uint32
		want uint32
	}{
		{"BTRFS_IOC_SNAP_CREATE", btrfsIocSnapCreate, iow(1, v1)},
		{"BTRFS_IOC_SUBVOL_CREATE", btrfsIocSubvolCreate, iow(14, v1)},
		{"BTRFS_IOC_SNAP_DESTROY", btrfsIocSnapDestroy, iow(15, v1)},
		{"BTRFS_IOC_SNAP_CREATE_V2", btrfsIocSnapCreateV2, iow(23, v2)},
		{"BTRFS_IOC_SUBVOL_CREATE_V2", btrfsIocSubvolCreateV2, iow(24, v2)},
		{"BTRFS_IOC_SNAP_DESTROY_V2", btrfsIocSnapDestroyV2, iow(63, v2)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Errorf("%#x, want %#x", tt.got, tt.want)
			}
			if !slices.Contains(deniedIoctls, tt.got) {
				t.Errorf("%#x is not denied", tt.got)
			}
		})
	}
}

// TestIoctlComplement: the allow rules match a request exactly when its
// low 32 bits (all the kernel reads) are not denied.
func TestIoctlComplement(t *testing.T) {
	rules := ioctlComplement(deniedIoctls)
	allowed := func(req uint64) bool {
		return slices.ContainsFunc(rules, func(a specs.LinuxSeccompArg) bool {
			return a.Index == 1 && a.Op == specs.OpMaskedEqual && req&a.Value == a.ValueTwo
		})
	}
	reqs := []uint64{0, 1, 0xffffffff, unix.TCGETS, unix.TIOCGPTN, 0xffffffff00000000 | unix.TIOCGPTN, unix.FICLONE}
	for _, d := range deniedIoctls {
		reqs = append(reqs, uint64(d)-1, uint64(d)+1, 1<<32|uint64(d), 0xffffffff00000000|uint64(d))
		for bit := range 32 {
			reqs = append(reqs, uint64(d^1<<bit))
		}
	}
	for _, req := range reqs {
		want := !slices.Contains(deniedIoctls, uint32(req))
		if got := allowed(req); got != want {
			t.Errorf("request %#x: allowed %v, want %v", req, got, want)
		}
	}
	t.Logf("%d rules for %d denied requests", len(rules), len(deniedIoctls))
}

// TestBtrfsSubvolumeRefused: a job on btrfs storage with a disk limit can
// make no subvolume or snapshot inside its clone (one would have a qgroup
// of its own, outside the limit) and delete none, whether
// kiln-sandbox-init installs the filter or runc builds it (no usable init
// binary). The filesystem is mounted user_subvol_rm_allowed, so the
// deletes are refused by the filter, not by the capability check alone.
// Under gVisor the sentry answers them (ENOTTY); the host never sees them.
func TestBtrfsSubvolumeRefused(t *testing.T) {
	addr := testsupport.StartContainerd(t)
	mnt := testsupport.Btrfs(t)
	if err := unix.Mount("", mnt, "", unix.MS_REMOUNT, "user_subvol_rm_allowed"); err != nil {
		t.Fatal(err)
	}
	st, err := treestore.NewBtrfs(filepath.Join(mnt, "kiln"))
	if err != nil {
		t.Fatal(err)
	}
	rootfs := testsupport.BusyboxRootfs(t)
	buildSysprobe(t, rootfs)
	if err := os.MkdirAll(filepath.Join(rootfs, "work"), 0o755); err != nil {
		t.Fatal(err)
	}
	testsupport.CommitImage(t, st, "img", "v1", rootfs)
	const limit = 16 << 20
	// Writes of twice the limit: into the clone (refused, the limit
	// holds) and into a subvolume the job made (the escape).
	const script = `
/bin/sysprobe btrfs-create /work
dd if=/dev/zero of=/work/big bs=1M count=32 2>/dev/null && sync && echo clone_write=ok || echo clone_write=refused
rm -f /work/big
if [ -d /work/sv1 ]; then
	dd if=/dev/zero of=/work/sv1/big bs=1M count=32 2>/dev/null && sync && echo escape=ok || echo escape=refused
else
	echo escape=no-subvolume
fi
/bin/sysprobe btrfs-destroy /work
`
	for _, tc := range []struct {
		name      string
		init      string // ContainerdConfig.SandboxInit
		isolation string
		want      string // what the ioctls get
	}{
		{"compiled once, installed by kiln-sandbox-init", testsupport.SandboxInit(t), api.IsolationContainer, "EPERM"},
		{"built by runc", "/bin/true", api.IsolationContainer, "EPERM"}, // dynamic: refused, runc builds the profile
		// gVisor's sentry does not pass them on to the host.
		{"gvisor", testsupport.SandboxInit(t), api.IsolationGVisor, "ENOTTY"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.isolation == api.IsolationGVisor {
				testsupport.NeedCommand(t, "runsc")
			}
			c, _ := newLauncherOn(t, addr, ContainerdConfig{SandboxInit: tc.init})
			if viaInit := tc.init != "/bin/true"; (c.filters != nil) != viaInit {
				t.Fatalf("launcher filters %v, want via init %v", c.filters != nil, viaInit)
			}
			spec, console := shSpec(t, script)
			spec.Isolation = tc.isolation
			ctx := context.Background()
			clone, err := st.CloneLimited(ctx, "img@v1", spec.RunID, limit)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := st.Destroy(ctx, spec.RunID); err != nil {
					t.Errorf("destroy the clone: %v", err)
				}
			})
			spec.Root = clone.Root
			if exit := run(t, c, spec); exit.Code != 0 {
				t.Fatalf("exit %+v; console:\n%s", exit, console)
			}
			t.Logf("console:\n%s", console)
			got := map[string]string{}
			for l := range strings.Lines(console.String()) {
				if k, v, ok := strings.Cut(strings.TrimSpace(l), "="); ok {
					got[k] = v
				}
			}
			for _, k := range []string{"btrfs_subvol_create", "btrfs_subvol_create_v2", "btrfs_snap_create",
				"btrfs_snap_create_v2", "btrfs_snap_create_v2_high", "btrfs_snap_destroy", "btrfs_snap_destroy_v2"} {
				if got[k] != tc.want {
					t.Errorf("%s = %q, want %s", k, got[k], tc.want)
				}
			}
			if got["escape"] != "no-subvolume" {
				t.Errorf("write into a subvolume of the job's: %q", got["escape"])
			}
			if got["clone_write"] != "refused" {
				t.Errorf("write past the limit into the clone: %q, want refused", got["clone_write"])
			}
		})
	}
}
