package linux

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime"
	"slices"
	"strings"

	"github.com/containerd/containerd/containers"
	"github.com/containerd/containerd/contrib/apparmor"
	"github.com/containerd/containerd/contrib/seccomp"
	"github.com/containerd/containerd/oci"
	pkgapparmor "github.com/containerd/containerd/pkg/apparmor"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// AppArmorProfile is the name kiln loads containerd's default AppArmor
// profile under (once per boot; an existing profile of that name is kept).
const AppArmorProfile = "kiln-default"

// droppedCaps leave containerd's default set: raw sockets (spoofing, ARP
// games on a shared network), device nodes (a block device opened from the
// clone by a host-side hook), file capabilities (a binary that regains
// privileges later) and writing to the audit log. docs/security.md lists
// the kept set and why each capability stays.
var droppedCaps = []string{"CAP_NET_RAW", "CAP_MKNOD", "CAP_SETFCAP", "CAP_AUDIT_WRITE"}

// hardening is what every container-tier run gets; a job cannot opt out.
type hardening struct {
	appArmor bool // load and apply AppArmorProfile
}

// opts returns the spec options for a sandbox of image arch (qemu names),
// to be applied after everything that changes capabilities: the seccomp
// profile is generated from the final set.
func (h hardening) opts(arch string) []oci.SpecOpts {
	if unhardened {
		return []oci.SpecOpts{oci.WithNoNewPrivileges, withHardMounts}
	}
	opts := []oci.SpecOpts{
		oci.WithDroppedCapabilities(droppedCaps),
		oci.WithNoNewPrivileges,
		// Without CAP_SYS_ADMIN (never in the set) the default profile
		// refuses unshare and clone of new namespaces (so no nested user
		// namespace), mount, bpf, perf_event_open, keyctl and userfaultfd,
		// as Docker's does.
		seccomp.WithDefaultProfile(),
		withSeccompArch(arch),
		// Subvolumes a job made would escape its clone's disk limit.
		withoutIoctls(deniedIoctls...),
		withHardMounts,
	}
	if h.appArmor {
		opts = append(opts, apparmor.WithDefaultProfile(AppArmorProfile))
	}
	return opts
}

// compatArch is the seccomp arch of an image arch (qemu.Normalize names)
// that runs natively on a 64-bit host through the kernel's compat ABI.
var compatArch = map[string]specs.Arch{"i386": specs.ArchX86, "armhf": specs.ArchARM, "armel": specs.ArchARM}

// withSeccompArch keeps the profile to the host's own syscall ABI, plus the
// compat one an image of arch needs (a 386 image on amd64): stricter than
// containerd's default, which also admits x86 and x32 on every amd64
// sandbox. It roughly halves what runc spends building the filter
// (docs/benchmarks.md), and the compat ABIs are a known source of kernel
// bugs. A 32-bit binary in a 64-bit image then gets no system calls.
func withSeccompArch(arch string) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		sc := s.Linux.Seccomp
		if sc == nil || len(sc.Architectures) == 0 {
			return nil
		}
		// containerd lists the native arch first.
		keep := []specs.Arch{sc.Architectures[0]}
		if a, ok := compatArch[arch]; ok && slices.Contains(sc.Architectures, a) {
			keep = append(keep, a)
		}
		sc.Architectures = keep
		return nil
	}
}

// withHardMounts adds nosuid and nodev to every bind mount, and noexec to
// none (build trees run what they build).
func withHardMounts(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
	for i, m := range s.Mounts {
		if m.Type != "bind" {
			continue
		}
		s.Mounts[i].Options = addOpts(m.Options, "nosuid", "nodev")
	}
	return nil
}

func addOpts(have []string, add ...string) []string {
	out := slices.Clone(have)
	for _, a := range add {
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// AppArmorStatus says whether runs get the AppArmor profile on this host
// ("enabled") or why not.
func AppArmorStatus() string {
	if pkgapparmor.HostSupports() {
		return "enabled (" + AppArmorProfile + ")"
	}
	return "unavailable: AppArmor is not enabled in this kernel or apparmor_parser is missing; runs go on without it"
}

// withSysBind replaces the sysfs mount by a read-only bind of sys (a
// sysfs of the sandbox's network namespace, or the host's /sys when it
// shares the host's) where the sandbox joins a network namespace by path:
// a user namespace may not mount a sysfs for a network namespace it does
// not own.
func withSysBind(sys string) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		for _, ns := range s.Linux.Namespaces {
			if ns.Type == specs.NetworkNamespace && ns.Path == "" && !hostNetwork(s) {
				return nil // a new network namespace: sysfs mounts fine
			}
		}
		for i, m := range s.Mounts {
			if m.Destination == "/sys" {
				s.Mounts[i] = specs.Mount{Destination: "/sys", Type: "bind", Source: sys,
					Options: []string{"rbind", "nosuid", "noexec", "nodev", "ro"}}
			}
		}
		return nil
	}
}

// hostNetwork reports whether s shares the host's network namespace (no
// network namespace of its own).
func hostNetwork(s *oci.Spec) bool {
	for _, ns := range s.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace {
			return false
		}
	}
	return true
}

// mountNetnsSysfs mounts at dir (read-only) a sysfs whose network view is
// the network namespace at path: sysfs shows the interfaces of the
// namespace it was mounted from.
func mountNetnsSysfs(path, dir string) error {
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("sysfs for %s: %w", path, err)
	}
	return inNetns(path, func() error {
		if err := unix.Mount("sysfs", dir, "sysfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			return fmt.Errorf("sysfs for %s: %w", path, err)
		}
		return nil
	})
}

// withHostNetSysctls writes the spec's net.* sysctls into a network
// namespace the sandbox joins by path (a bridge's) from the host, and takes
// them out of the spec: runc writes sysctls from inside the sandbox's user
// namespace, which does not own that network namespace (EACCES).
func withHostNetSysctls(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
	var netns string
	for _, ns := range s.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace {
			netns = ns.Path
		}
	}
	if netns == "" {
		return nil // a namespace of the sandbox's own: runc may write them
	}
	kv := map[string]string{}
	for k, v := range s.Linux.Sysctl {
		if strings.HasPrefix(k, "net.") {
			kv[k] = v
			delete(s.Linux.Sysctl, k)
		}
	}
	if len(kv) == 0 {
		return nil
	}
	return netnsSysctls(netns, kv)
}

// netnsSysctls writes sysctls (net.*) in the network namespace at path.
func netnsSysctls(path string, kv map[string]string) error {
	return inNetns(path, func() error {
		for k, v := range kv {
			p := "/proc/sys/" + strings.ReplaceAll(k, ".", "/")
			if err := os.WriteFile(p, []byte(v), 0); err != nil {
				return fmt.Errorf("sysctl %s in %s: %w", k, path, err)
			}
		}
		return nil
	})
}

// inNetns runs f on a thread of its own that has entered the network
// namespace at path, and is thrown away afterwards.
func inNetns(path string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread has left the process's network
		// namespace, so the runtime must end it with the goroutine.
		runtime.LockOSThread()
		errc <- func() error {
			ns, err := os.Open(path)
			if err != nil {
				return fmt.Errorf("network namespace: %w", err)
			}
			defer ns.Close()
			if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
				return fmt.Errorf("enter network namespace %s: %w", path, err)
			}
			return f()
		}()
	}()
	return <-errc
}
