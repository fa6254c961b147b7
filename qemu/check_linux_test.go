package qemu

import (
	"context"
	"strings"
	"testing"
)

// The refusal must tell the admin the one thing to do for each state.
func TestCheckAdviceLinux(t *testing.T) {
	h := func(name string, enabled, fixed bool) Handler {
		return Handler{Name: name, Enabled: enabled, Fixed: fixed, Interpreter: "/usr/bin/" + name + "-static"}
	}
	c := capabilities("amd64",
		[]Handler{h("qemu-s390x", false, true), h("qemu-riscv64", true, false)},
		[]Handler{h("qemu-mips64el", true, true)},
		func(h Handler) bool { return h.Enabled && h.Fixed })
	tests := []struct{ arch, want string }{
		{"s390x", "update-binfmts --enable qemu-s390x"},
		{"riscv64", "lacks the F (fix-binary) flag"},
		{"riscv64", "qemu.register = true"},
		{"mips64el", "update-binfmts --enable qemu-mips64el"},
		{"mips64el", "set qemu.register = true in worker.toml"},
		{"ppc64el", "apt-get install qemu-user-static"},
	}
	for _, tt := range tests {
		t.Run(tt.arch+"/"+tt.want, func(t *testing.T) {
			err := Check(context.Background(), c, tt.arch, false)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Check(%s) = %v; want it to say %q", tt.arch, err, tt.want)
			}
		})
	}
	off := c
	off.Off = true
	if err := Check(context.Background(), off, "s390x", false); err == nil || !strings.Contains(err.Error(), "/proc/sys/fs/binfmt_misc/status") {
		t.Fatalf("binfmt_misc off: %v", err)
	}
}
