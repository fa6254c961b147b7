package linux

import (
	"fmt"
	"os"
	"strconv"
)

// runscNoNetwork is a wrapper kiln writes around runsc: the runc shim
// passes no flags of the caller's to its runtime binary, and runsc refuses
// the shim's (the host's) network namespace unless told --network=none,
// which gives the sandbox a loopback of gVisor's own.
const runscNoNetwork = runDir + "/runsc-network-none"

// writeRunscWrapper (re)writes the wrapper for runsc at path runsc.
func writeRunscWrapper(runsc string) error {
	script := "#!/bin/sh\n# Written by kiln: runsc without the host's network.\nexec " + strconv.Quote(runsc) + " --network=none \"$@\"\n"
	if b, err := os.ReadFile(runscNoNetwork); err == nil && string(b) == script {
		return nil
	}
	tmp := runscNoNetwork + ".tmp" + strconv.Itoa(os.Getpid())
	if err := os.WriteFile(tmp, []byte(script), 0o755); err != nil {
		return fmt.Errorf("runsc wrapper: %w", err)
	}
	if err := os.Rename(tmp, runscNoNetwork); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("runsc wrapper: %w", err)
	}
	return nil
}
