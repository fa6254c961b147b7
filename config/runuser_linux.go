package config

import (
	"fmt"
	"strconv"
	"strings"
)

// maxSandboxID is the highest uid or gid a Linux sandbox has: its user
// namespace maps ids 0-65535 (see docs/security.md).
const maxSandboxID = 65535

// checkRunUser validates [run] user on Linux: a numeric "uid[:gid]" inside
// the sandbox's id range (names would need the image's passwd, which differs
// per image).
func checkRunUser(s string) error {
	if s == "" {
		return nil
	}
	u, g, hasGID := strings.Cut(s, ":")
	ids := []string{u}
	if hasGID {
		ids = append(ids, g)
	}
	for _, id := range ids {
		n, err := strconv.ParseUint(id, 10, 32)
		if err != nil {
			return fmt.Errorf("host config: run.user %q: on Linux want a numeric uid[:gid] (a name is read only on FreeBSD)", s)
		}
		if n > maxSandboxID {
			return fmt.Errorf("host config: run.user %q: ids above %d do not exist in the sandbox's user namespace", s, maxSandboxID)
		}
	}
	return nil
}
