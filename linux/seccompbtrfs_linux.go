package linux

import (
	"context"
	"errors"
	"slices"

	"github.com/containerd/containerd/containers"
	"github.com/containerd/containerd/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// The btrfs ioctls that make or delete a subvolume (include/uapi/linux/btrfs.h),
// which a job must not issue: a subvolume it makes inside its clone gets a
// qgroup of its own, without the clone's disk limit, and creating one needs
// only write permission on the directory. golang.org/x/sys/unix does not
// define them. Each is _IOW(0x94, nr, size) in the generic ioctl encoding
// (x86, arm, arm64): 1<<30 (write) | size<<16 | 0x94<<8 | nr, where both
// struct btrfs_ioctl_vol_args and struct btrfs_ioctl_vol_args_v2 are 4096
// bytes (TestBtrfsIoctlNumbers derives them again).
const (
	btrfsIocSnapCreate     = 0x50009401 // _IOW(0x94, 1, struct btrfs_ioctl_vol_args)
	btrfsIocSubvolCreate   = 0x5000940e // _IOW(0x94, 14, struct btrfs_ioctl_vol_args)
	btrfsIocSnapDestroy    = 0x5000940f // _IOW(0x94, 15, struct btrfs_ioctl_vol_args)
	btrfsIocSnapCreateV2   = 0x50009417 // _IOW(0x94, 23, struct btrfs_ioctl_vol_args_v2)
	btrfsIocSubvolCreateV2 = 0x50009418 // _IOW(0x94, 24, struct btrfs_ioctl_vol_args_v2)
	btrfsIocSnapDestroyV2  = 0x5000943f // _IOW(0x94, 63, struct btrfs_ioctl_vol_args_v2)
)

// deniedIoctls are refused (EPERM) in every container-tier sandbox. The
// destroys need CAP_SYS_ADMIN in the initial user namespace already,
// unless the filesystem is mounted user_subvol_rm_allowed; no build needs
// them either way.
var deniedIoctls = []uint32{btrfsIocSnapCreate, btrfsIocSubvolCreate, btrfsIocSnapDestroy,
	btrfsIocSnapCreateV2, btrfsIocSubvolCreateV2, btrfsIocSnapDestroyV2}

// withoutIoctls makes the profile refuse the ioctl requests deny with its
// default action (EPERM in containerd's), on every arch it lists.
//
// A rule that refuses them beside the profile's unconditional allow of
// ioctl does nothing: libseccomp keeps the unconditional rule and drops the
// conditional one silently, whichever comes first. So ioctl loses its
// unconditional allow and is allowed instead by rules that together match
// every request but these (ioctlComplement). The profile stays the one
// source of the filter: runc builds it the same whether kiln-sandbox-init
// installs it (compiled once) or runc does in every container.
func withoutIoctls(deny ...uint32) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		sc := s.Linux.Seccomp
		if sc == nil {
			return nil
		}
		if sc.DefaultAction == specs.ActAllow || sc.DefaultAction == specs.ActLog {
			return errors.New("seccomp profile allows by default: it cannot be made to refuse btrfs subvolume ioctls")
		}
		var kept []specs.LinuxSyscall
		for _, r := range sc.Syscalls {
			if r.Action == specs.ActAllow || r.Action == specs.ActLog {
				r.Names = slices.DeleteFunc(slices.Clone(r.Names), func(n string) bool { return n == "ioctl" })
				if len(r.Names) == 0 {
					continue
				}
			}
			kept = append(kept, r)
		}
		for _, a := range ioctlComplement(deny) {
			kept = append(kept, specs.LinuxSyscall{Names: []string{"ioctl"}, Action: specs.ActAllow, Args: []specs.LinuxSeccompArg{a}})
		}
		sc.Syscalls = kept
		return nil
	}
}

// ioctlComplement returns conditions on ioctl's request (args[1]) that
// together match every request whose low 32 bits are not in deny, and
// none whose are: one "masked equal" per branch off the binary trie of
// deny (about 6 per denied request). runc turns several conditions on one
// argument within a rule into separate rules (an OR, not an AND), so a
// range or a "not equal" per request cannot express this; a masked compare
// can, alone. Only the low 32 bits count because the kernel takes the
// request as an unsigned int: 0x1_50009401 is 0x50009401 to it.
func ioctlComplement(deny []uint32) []specs.LinuxSeccompArg {
	var out []specs.LinuxSeccompArg
	var walk func(prefix uint32, bit int, members []uint32)
	walk = func(prefix uint32, bit int, members []uint32) {
		if bit < 0 {
			return // prefix is a denied request
		}
		mask := ^uint32(0) << bit // bits 31..bit
		for _, b := range []uint32{0, 1} {
			p := prefix | b<<bit
			var under []uint32
			for _, m := range members {
				if m&mask == p {
					under = append(under, m)
				}
			}
			if len(under) == 0 {
				out = append(out, specs.LinuxSeccompArg{Index: 1, Value: uint64(mask), ValueTwo: uint64(p), Op: specs.OpMaskedEqual})
				continue
			}
			walk(p, bit-1, under)
		}
	}
	walk(0, 31, deny)
	return out
}
