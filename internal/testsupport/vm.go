package testsupport

import (
	"os"
	"path/filepath"
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
