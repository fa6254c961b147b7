package linux

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/containerd/containers"
	"github.com/containerd/containerd/identifiers"
	"github.com/containerd/containerd/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/linux/netcni"
	"github.com/kiln-build/kiln/sandbox"
)

// specOpts turns spec into the OCI spec, starting from containerd's default
// (namespaces, default capability set, RLIMIT_NOFILE 1024, masked paths)
// and ending with the hardening every run gets. att is the run's network
// for a bridge sandbox (nil to only check spec).
func specOpts(spec sandbox.Spec, att *netcni.Attachment, h hardening) ([]oci.SpecOpts, error) {
	if err := identifiers.Validate(containerPrefix + spec.RunID); err != nil {
		return nil, fmt.Errorf("run ID %q: %v: %w", spec.RunID, err, errdefs.ErrInvalid)
	}
	if !filepath.IsAbs(spec.Root) {
		return nil, fmt.Errorf("root %q is not absolute: %w", spec.Root, errdefs.ErrInvalid)
	}
	if len(spec.Args) == 0 {
		return nil, fmt.Errorf("no command: %w", errdefs.ErrInvalid)
	}
	cwd := spec.Cwd
	if cwd == "" {
		cwd = "/"
	}
	hostname := spec.Hostname
	if hostname == "" {
		hostname = spec.RunID
	}
	opts := []oci.SpecOpts{
		oci.WithDefaultSpec(),
		oci.WithDefaultUnixDevices,
		oci.WithRootFSPath(spec.Root),
		oci.WithProcessArgs(spec.Args...),
		withEnv(spec.Env),
		oci.WithProcessCwd(cwd),
		oci.WithHostname(hostname),
	}
	if spec.User != "" {
		uid, gid, err := sandbox.ParseUser(spec.User)
		if err != nil {
			return nil, err
		}
		opts = append(opts, oci.WithUIDGID(uid, gid))
	}
	var mounts []specs.Mount
	for _, m := range spec.Mounts {
		if !filepath.IsAbs(m.Source) || !filepath.IsAbs(m.Target) {
			return nil, fmt.Errorf("mount %s -> %s: paths must be absolute: %w", m.Source, m.Target, errdefs.ErrInvalid)
		}
		o := []string{"rbind", "rw"}
		if m.ReadOnly {
			// Not recursive: runc 1.1 knows no "rro", and an "rbind,ro"
			// leaves mounts below the source writable. A submount of a
			// host tool's directory is not seen at all.
			o = []string{"bind", "ro"}
		}
		mounts = append(mounts, specs.Mount{Destination: m.Target, Type: "bind", Source: m.Source, Options: o})
	}
	opts = append(opts, oci.WithMounts(mounts))
	switch spec.Network.OrNone() {
	case sandbox.NetworkNone:
		// containerd's default: a new network namespace, loopback only.
	case sandbox.NetworkHost:
		opts = append(opts, oci.WithHostNamespace(specs.NetworkNamespace),
			oci.WithHostResolvconf, oci.WithHostHostsFile)
	case sandbox.NetworkBridge:
		if att != nil {
			opts = append(opts, bridgeOpts(*att))
		}
	default:
		return nil, fmt.Errorf("network %q: %w", spec.Network, errdefs.ErrInvalid)
	}
	// Without kiln's own limits the container still lands in its own cgroup
	// (containerd's default path /<namespace>/<id>).
	if m := spec.MemoryBytes; m > 0 {
		// swap = memory: the limit is on memory+swap, so no swapping past it.
		opts = append(opts, oci.WithMemoryLimit(uint64(m)), oci.WithMemorySwap(m))
	}
	if spec.CPUs > 0 {
		opts = append(opts, oci.WithCPUCFS(int64(spec.CPUs*cfsPeriod), cfsPeriod))
	}
	if spec.Pids > 0 {
		opts = append(opts, oci.WithPidsLimit(spec.Pids))
	}
	if spec.CPUSet > 0 {
		cpus, err := firstCPUs(spec.CPUSet)
		if err != nil {
			return nil, err
		}
		opts = append(opts, oci.WithCPUs(cpus))
	}
	return append(opts, h.opts(spec.Arch)...), nil
}

// bridgeOpts joins the run's pinned network namespace, mounts its
// resolv.conf read-only, and switches IPv6 off in the namespace: the
// plugins give sandboxes IPv4 only, and an IPv6 link-local address would
// only let a job talk to its link without kiln's firewall rules.
func bridgeOpts(att netcni.Attachment) oci.SpecOpts {
	return func(ctx context.Context, client oci.Client, c *containers.Container, s *oci.Spec) error {
		if err := oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: att.NetNS})(ctx, client, c, s); err != nil {
			return err
		}
		s.Mounts = append(s.Mounts, specs.Mount{Destination: "/etc/resolv.conf", Type: "bind", Source: att.ResolvConf, Options: []string{"rbind", "ro", "nosuid", "nodev", "noexec"}})
		if s.Linux.Sysctl == nil {
			s.Linux.Sysctl = map[string]string{}
		}
		s.Linux.Sysctl["net.ipv6.conf.all.disable_ipv6"] = "1"
		s.Linux.Sysctl["net.ipv6.conf.default.disable_ipv6"] = "1"
		return nil
	}
}

// firstCPUs is the cpuset (e.g. "0,2") of the first n CPUs this process
// may run on, or all of them when there are fewer: a cpuset naming a CPU
// the host's cgroup lacks would fail the start.
func firstCPUs(n int) (string, error) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return "", fmt.Errorf("cpus: %w", err)
	}
	var cpus []string
	for i := 0; i < len(set)*64 && len(cpus) < n; i++ {
		if set.IsSet(i) {
			cpus = append(cpus, strconv.Itoa(i))
		}
	}
	return strings.Join(cpus, ","), nil
}

// withEnv sets the environment to exactly env: a rootfs without an image
// has no image config to merge with, and Spec.Env is complete.
func withEnv(env []string) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		s.Process.Env = append([]string(nil), env...)
		return nil
	}
}
