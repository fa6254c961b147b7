package worker

import (
	"context"
	"maps"
	"os/exec"
	"strings"
	"syscall"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/freebsd"
	"github.com/kiln-build/kiln/platform"
)

func osFacts(ctx context.Context, f map[string]string) {
	if out, err := exec.CommandContext(ctx, "uname", "-r").Output(); err == nil {
		f["kernel"] = strings.TrimSpace(string(out))
	}
	distroFacts(f, "/etc/os-release", "/var/run/os-release")
	bsd, err := freebsd.Facts(ctx)
	if err != nil {
		f["freebsd"] = "unknown: " + err.Error()
		return
	}
	// freebsd.Facts says "arch" and "os" too; ours are the same values.
	maps.Copy(f, bsd)
	if mem, ok := bsd["hw.physmem"]; ok {
		f["memory_bytes"] = mem
	}
}

func freeBytes(dir string) (uint64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	// Bavail goes negative when root's reserve is in use.
	return uint64(max(st.Bavail, 0)) * st.Bsize, nil
}

// launcherFacts: jails need no daemon, so there is nothing to reach.
func launcherFacts(ctx context.Context, host *platform.Host, f map[string]string) {
	f["launcher"] = "jail"
	f["isolations"] = api.IsolationContainer
}
