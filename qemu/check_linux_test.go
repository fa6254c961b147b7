package qemu

import (
	"context"
	"strings"
	"testing"
)

// The refusal must tell the admin what to do in each state, naming only
// commands the host has: a Debian 12 host with qemu-user-static but
// without binfmt-support has no update-binfmts.
func TestCheckAdviceLinux(t *testing.T) {
	h := func(name string, enabled, fixed bool) Handler {
		return Handler{Name: name, Enabled: enabled, Fixed: fixed, Interpreter: "/usr/libexec/qemu-binfmt/" + name + "-binfmt-P"}
	}
	shippedAarch64 := h("qemu-aarch64", true, true)
	shippedAarch64.Source = "/usr/lib/binfmt.d/qemu-aarch64.conf"
	c := capabilities("amd64",
		[]Handler{h("qemu-s390x", false, true), h("qemu-riscv64", true, false)},
		[]Handler{shippedAarch64},
		func(h Handler) bool { return h.Enabled && h.Fixed })
	const dir = "/proc/sys/fs/binfmt_misc"
	var (
		debian12   = adviceHost{systemd: true, binfmtDir: dir}                      // qemu-user-static only
		withBS     = adviceHost{updateBinfmts: true, systemd: true, binfmtDir: dir} // and binfmt-support
		noSystemd  = adviceHost{binfmtDir: dir}                                     // a container, say
		bsNoSystem = adviceHost{updateBinfmts: true, binfmtDir: dir}
	)
	tests := []struct {
		name    string
		host    adviceHost
		arch    string
		want    []string
		wantNot []string
		off     bool
	}{
		{"debian 12 without binfmt-support: shipped arm64", debian12, "arm64",
			[]string{"cat /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register", "systemctl restart systemd-binfmt", "qemu.register = true"},
			[]string{"update-binfmts"}, false},
		{"binfmt-support installed: shipped arm64", withBS, "arm64",
			[]string{"update-binfmts --enable qemu-aarch64", "systemctl restart systemd-binfmt", "cat /usr/lib/binfmt.d/qemu-aarch64.conf", "qemu.register = true"},
			nil, false},
		{"no systemd, no binfmt-support: shipped arm64", noSystemd, "arm64",
			[]string{"cat /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register", "qemu.register = true"},
			[]string{"update-binfmts", "systemctl"}, false},
		{"disabled handler without binfmt-support", debian12, "s390x",
			[]string{"echo 1 > /proc/sys/fs/binfmt_misc/qemu-s390x", "qemu.register = true"},
			[]string{"update-binfmts"}, false},
		{"disabled handler with binfmt-support", bsNoSystem, "s390x",
			[]string{"update-binfmts --enable qemu-s390x", "qemu.register = true"}, nil, false},
		{"handler without F", debian12, "riscv64",
			[]string{"lacks the F (fix-binary) flag", "qemu.register = true"}, []string{"update-binfmts"}, false},
		{"nothing installed, debian 12", debian12, "ppc64el",
			[]string{"apt-get install qemu-user-static", "systemctl restart systemd-binfmt", "cat /usr/lib/binfmt.d/qemu-ppc64le.conf", "qemu.register = true"},
			[]string{"update-binfmts"}, false},
		{"nothing installed, binfmt-support", withBS, "ppc64el",
			[]string{"apt-get install qemu-user-static", "update-binfmts --enable qemu-ppc64le"}, nil, false},
		{"binfmt_misc off", debian12, "arm64", []string{"echo 1 > /proc/sys/fs/binfmt_misc/status"}, []string{"update-binfmts"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cc := c
			cc.Off = tt.off
			got := tt.host.advice(cc, tt.arch)
			for _, w := range tt.want {
				if !strings.Contains(got, w) {
					t.Errorf("advice %q lacks %q", got, w)
				}
			}
			for _, w := range tt.wantNot {
				if strings.Contains(got, w) {
					t.Errorf("advice %q names %q, which this host lacks", got, w)
				}
			}
		})
	}
	// Check wraps the advice of this host.
	if err := Check(context.Background(), c, "arm64", false); err == nil || !strings.Contains(err.Error(), "qemu.register = true") {
		t.Fatalf("Check(arm64) = %v", err)
	}
}
