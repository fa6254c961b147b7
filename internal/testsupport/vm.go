package testsupport

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// NeedVM requires what the VM tier boots guests with: qemu-system-x86_64,
// a Debian kernel under /boot and its modules (apt-get install
// qemu-system-x86 linux-image-amd64).
func NeedVM(t testing.TB) {
	t.Helper()
	NeedRoot(t)
	NeedCommand(t, "qemu-system-x86_64")
	ks, _ := filepath.Glob("/boot/vmlinuz-*")
	Need(t, len(ks) > 0, "a guest kernel /boot/vmlinuz-* (apt-get install linux-image-amd64)")
	for _, k := range ks {
		ver := filepath.Base(k)[len("vmlinuz-"):]
		_, err := os.Stat(filepath.Join("/lib/modules", ver, "modules.dep"))
		Need(t, err == nil, "modules of "+k)
	}
}

// Guests lists the pids of the VM tier's qemu processes of the host whose
// data dir is dataDir (found, like the reaper finds them, by their
// -pidfile argument under <data_dir>/vm).
func Guests(t testing.TB, dataDir string) []int {
	t.Helper()
	var pids []int
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		b, _ := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		if strings.Contains(string(b), "\x00"+filepath.Join(dataDir, "vm")+"/") {
			pids = append(pids, pid)
		}
	}
	return pids
}
