package freebsd

import (
	"context"
	"maps"
	"runtime"
	"strings"

	"github.com/kiln-build/kiln/qemu"
)

// Facts describes this FreeBSD host for the scheduler: "os", "arch",
// "freebsd-version" (userland), "hw.ncpu", "hw.physmem" (bytes) and
// "zpool.<pool>.free" (bytes) for every imported pool.
func Facts(ctx context.Context) (map[string]string, error) {
	facts := map[string]string{"os": runtime.GOOS, "arch": qemu.Native()}
	ver, err := run(ctx, "freebsd-version", "-u")
	if err != nil {
		return nil, err
	}
	facts["freebsd-version"] = strings.TrimSpace(string(ver))
	for _, key := range []string{"hw.ncpu", "hw.physmem"} {
		out, err := run(ctx, "sysctl", "-n", key)
		if err != nil {
			return nil, err
		}
		facts[key] = strings.TrimSpace(string(out))
	}
	out, err := run(ctx, "zpool", "list", "-Hp", "-o", "name,free")
	if err != nil {
		return nil, err
	}
	pools, err := ParseZpoolFree(out)
	if err != nil {
		return nil, err
	}
	maps.Copy(facts, pools)
	return facts, nil
}
