package linux

import (
	"fmt"
	"strings"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/api/types/runc/options"

	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/names"
	"github.com/kiln-build/kiln/sandbox"
)

// runtimeProfile is what differs between the runtimes a container sandbox
// runs under: runc, or gVisor's runsc (isolation "gvisor"). runtimeFor
// picks it once per start; create asks the profile, never the isolation.
type runtimeProfile struct {
	// binary is the runc shim's runtime binary for a sandbox without and
	// with a bridge network; "" is the shim's own (runc).
	binary, bridgeBinary string
	// userns gives the sandbox a user namespace of its own: its root and
	// writable mounts become idmapped copies, and it gets a sysfs of its
	// network namespace (see Containerd.userns).
	userns bool
	// hostSysctls has the host write the spec's net.* sysctls into a
	// bridge network's namespace (see withHostNetSysctls).
	hostSysctls bool
	// checkNetns refuses a bridge network whose namespace is the host's
	// (see notHostNetns).
	checkNetns bool
	// seccompInit lets kiln-sandbox-init install the seccomp profile.
	seccompInit bool
	// sharedShim lets the sandbox run on a shared shim.
	sharedShim bool
}

// runtimeFor checks that spec's isolation can run here as asked and
// returns its runtime's profile.
func (c *Containerd) runtimeFor(spec sandbox.Spec) (runtimeProfile, error) {
	switch spec.Isolation {
	case "", names.IsolationContainer:
		// A kiln_unhardened test build runs plain runc containers.
		return runtimeProfile{userns: !unhardened, hostSysctls: !unhardened, seccompInit: true, sharedShim: true}, nil
	case names.IsolationGVisor:
		if c.runsc == "" {
			return runtimeProfile{}, fmt.Errorf("isolation %q: runsc is not installed on this host (apt-get install runsc): %w", spec.Isolation, errdefs.ErrUnsupported)
		}
		if spec.Network.OrNone() == sandbox.NetworkHost {
			// runsc refuses the host's network namespace.
			return runtimeProfile{}, fmt.Errorf("isolation %q: network %q: gVisor does not run in the host's network namespace (use \"none\" or \"bridge\"): %w", spec.Isolation, spec.Network.OrNone(), errdefs.ErrUnsupported)
		}
		if spec.Network.OrNone() == sandbox.NetworkBridge && c.runscBridgeErr != nil {
			return runtimeProfile{}, fmt.Errorf("isolation %q: network \"bridge\": %w: %w", spec.Isolation, c.runscBridgeErr, errdefs.ErrUnsupported)
		}
		// With a bridge network gVisor's netstack takes over the veth in
		// the run's namespace. No user namespace and no sysfs of kiln's:
		// the sentry is a kernel of its own, with its own /sys. The host
		// writes the namespace's net.* sysctls (IPv6 off) before runsc
		// copies the veth's addresses, so gVisor gets no IPv6 address
		// either. runsc installs its own seccomp filter, and runs on a
		// shim of its own: a shared shim's anchor runs under runc.
		return runtimeProfile{binary: runscNoNetwork, bridgeBinary: runscSandboxNetwork, hostSysctls: true, checkNetns: true}, nil
	default:
		return runtimeProfile{}, fmt.Errorf("isolation %q: this launcher offers %s: %w", spec.Isolation, strings.Join(c.Isolations(), ", "), errdefs.ErrUnsupported)
	}
}

// runtime is the container's runtime option, for a sandbox with a bridge
// network when bridged.
func (p runtimeProfile) runtime(client *containerd.Client, bridged bool) containerd.NewContainerOpts {
	bin := p.binary
	if bridged {
		bin = p.bridgeBinary
	}
	if bin == "" {
		return containerd.WithRuntime(client.Runtime(), nil)
	}
	return containerd.WithRuntime(client.Runtime(), &options.Options{BinaryName: bin})
}
