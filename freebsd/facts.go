package freebsd

import (
	"fmt"
	"strconv"
	"strings"
)

// ParseZpoolFree reads `zpool list -Hp -o name,free` into fact keys
// "zpool.<name>.free" (bytes).
func ParseZpoolFree(out []byte) (map[string]string, error) {
	facts := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if l == "" {
			continue
		}
		f := strings.Split(l, "\t")
		if len(f) != 2 {
			return nil, fmt.Errorf("zpool list: unexpected line %q", l)
		}
		if _, err := strconv.ParseUint(f[1], 10, 64); err != nil {
			return nil, fmt.Errorf("zpool list: pool %s: free %q is not a byte count", f[0], f[1])
		}
		facts["zpool."+f[0]+".free"] = f[1]
	}
	return facts, nil
}
