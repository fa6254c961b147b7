package worker

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/kiln-build/kiln/linux"
	"github.com/kiln-build/kiln/platform"
	"github.com/kiln-build/kiln/sandbox"
)

func osFacts(ctx context.Context, f map[string]string) {
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		f["kernel"] = strings.TrimSpace(string(b))
	}
	distroFacts(f, "/etc/os-release", "/usr/lib/os-release")
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		if n, ok := memTotal(b); ok {
			f["memory_bytes"] = strconv.FormatUint(n, 10)
		}
	}
}

// memTotal reads MemTotal (kB) from /proc/meminfo, in bytes.
func memTotal(meminfo []byte) (uint64, bool) {
	sc := bufio.NewScanner(bytes.NewReader(meminfo))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			n, err := strconv.ParseUint(fields[1], 10, 64)
			if err != nil {
				return 0, false
			}
			if len(fields) >= 3 && fields[2] == "kB" {
				n *= 1024
			}
			return n, true
		}
	}
	return 0, false
}

func freeBytes(dir string) (uint64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return st.Bavail * uint64(max(st.Bsize, 0)), nil
}

// launcherFacts asks containerd for its version and the launcher for the
// isolation tiers it offers, and says whether runs get AppArmor; host is
// nil when the storage could not be opened, and then containerd is
// reported unreachable without being asked.
func launcherFacts(ctx context.Context, host *platform.Host, f map[string]string) {
	f["launcher"] = "containerd"
	f["containerd"] = "unreachable"
	f["apparmor"] = linux.AppArmorStatus()
	if host == nil {
		return
	}
	l, err := host.Launcher(ctx)
	if err != nil {
		return
	}
	f["isolations"] = strings.Join(sandbox.Isolations(l), ",")
	if s, ok := l.(interface{ SeccompStatus() string }); ok {
		f["seccomp"] = s.SeccompStatus()
	}
	if v, ok := l.(interface {
		Version(ctx context.Context) (string, error)
	}); ok {
		if ver, err := v.Version(ctx); err == nil {
			f["containerd"] = ver
		}
	}
}
