package qemu_test

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/kiln-build/kiln/internal/testsupport"
	"github.com/kiln-build/kiln/qemu"
)

// TestForeignBusyboxRuns runs Debian's arm64 and s390x (big-endian) static
// busybox directly on the host: the kernel hands them to qemu through
// binfmt_misc, and uname -m must print the emulated machine.
func TestForeignBusyboxRuns(t *testing.T) {
	testsupport.NeedRoot(t)
	for _, arch := range []string{"arm64", "s390x"} {
		t.Run(arch, func(t *testing.T) {
			bb := testsupport.ForeignBusybox(t, arch)
			out, err := exec.CommandContext(t.Context(), bb, "uname", "-m").CombinedOutput()
			if err != nil {
				t.Fatalf("%s uname -m: %v: %s", bb, err, out)
			}
			if got, want := strings.TrimSpace(string(out)), qemu.Uname(arch); got != want {
				t.Fatalf("uname -m = %q, want %q", got, want)
			}
			file, err := exec.Command("file", "-b", bb).Output()
			if err == nil && strings.Contains(string(file), "x86-64") {
				t.Fatalf("%s is a host binary: %s", bb, file)
			}
		})
	}
}
