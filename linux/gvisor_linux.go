package linux

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/errdefs"
)

// The runc shim passes no flags of the caller's to its runtime binary, so
// kiln runs runsc through wrappers it writes, one per network mode gVisor
// offers:
//
//   - runscNoNetwork: --network=none, a loopback of gVisor's own and
//     nothing else (network "none").
//   - runscSandboxNetwork: --network=sandbox, gVisor's own network stack
//     (netstack) in the sentry, which joins the network namespace named in
//     the OCI spec and takes over the interfaces it finds there (a bridge
//     run's veth from netcni), with their addresses and routes. The host's
//     kernel then routes and filters the sandbox's packets on the veth's
//     host side as for a runc sandbox, so netcni's rules hold.
//
// runsc refuses to run in the host's network namespace, which is why
// network "host" is not offered under gVisor.
const (
	runscNoNetwork      = runDir + "/runsc-network-none"
	runscSandboxNetwork = runDir + "/runsc-network-sandbox"
)

// writeRunscWrappers (re)writes the wrappers around runsc at path runsc.
// bridgeErr says why there is no sandbox wrapper (a tool it needs is
// missing): gVisor then runs network "none" only.
func writeRunscWrappers(runsc string) (bridgeErr, err error) {
	// Word for word what kiln wrote before the sandbox wrapper existed, so
	// that kiln processes of both versions on one host leave it alone.
	none := "#!/bin/sh\n# Written by kiln: runsc without the host's network.\nexec " + strconv.Quote(runsc) + " --network=none \"$@\"\n"
	if err := writeWrapper(runscNoNetwork, none); err != nil {
		return nil, err
	}
	// runsc (Debian's 20221219) takes a network namespace in which
	// /proc/sys/net/core/rmem_default exists for the host's and refuses
	// it; Linux 6.x shows that file in every namespace (gVisor issue
	// 10704, fixed after that release). So the sandbox wrapper runs runsc
	// in a mount namespace of its own with an empty tmpfs on /proc/sys/net
	// (on /proc/sys/net/core it would not do: that directory is another
	// one in each network namespace); runsc's netstack needs nothing from
	// there (the bridge tests run through this wrapper). Kiln makes the
	// check runsc no longer can: Start hands this wrapper only a namespace
	// that is not the host's (notHostNetns). The tools are found now, by
	// kiln's PATH, not by the shim's.
	tools := map[string]string{}
	for _, name := range []string{"unshare", "mount", "sh"} {
		p, err := exec.LookPath(name)
		if err != nil {
			return fmt.Errorf("gVisor with network \"bridge\" needs %s (util-linux): %w", name, err), nil
		}
		tools[name] = p
	}
	sbx := "#!/bin/sh\n# Written by kiln: runsc with its own network stack in the run's network namespace.\n" +
		"# /proc/sys/net is hidden from runsc: see writeRunscWrappers in kiln's linux package.\n" +
		"exec " + strconv.Quote(tools["unshare"]) + " --mount --propagation private " + strconv.Quote(tools["sh"]) + " -c " +
		"'" + strconv.Quote(tools["mount"]) + " -t tmpfs -o ro,nosuid,nodev,noexec,size=4k kiln-hide /proc/sys/net && exec \"$@\"' " +
		"runsc " + strconv.Quote(runsc) + " --network=sandbox \"$@\"\n"
	return nil, writeWrapper(runscSandboxNetwork, sbx)
}

// writeWrapper replaces path by script atomically, unless it holds script
// already.
func writeWrapper(path, script string) error {
	if b, err := os.ReadFile(path); err == nil && string(b) == script {
		return nil
	}
	tmp := path + ".tmp" + strconv.Itoa(os.Getpid())
	if err := os.WriteFile(tmp, []byte(script), 0o755); err != nil {
		return fmt.Errorf("runsc wrapper: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("runsc wrapper: %w", err)
	}
	return nil
}

// notHostNetns fails when the network namespace at path is kiln's own
// (the host's): runsc's netstack would take over the host's interfaces
// there, and the wrapper hides what runsc checks that with.
func notHostNetns(path string) error {
	var own, ns unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &own); err != nil {
		return fmt.Errorf("own network namespace: %w", err)
	}
	if err := unix.Stat(path, &ns); err != nil {
		return fmt.Errorf("network namespace %s: %w", path, err)
	}
	if own.Dev == ns.Dev && own.Ino == ns.Ino {
		return fmt.Errorf("network namespace %s is the host's: gVisor runs only in a namespace of its own: %w", path, errdefs.ErrInvalid)
	}
	return nil
}
