package vm

import (
	"bytes"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-build/kiln/internal/testsupport"
	"github.com/kiln-build/kiln/sandbox"
)

// Guests running jobs are booted by cmd/kiln's TestExecVM (through
// `kiln exec`, which is what a user runs) and by TestHostileGuest; these
// tests cover what kiln prepares for them.

func TestModuleOrder(t *testing.T) {
	dir := t.TempDir()
	dep := `kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/fscache/fscache.ko kernel/fs/netfs/netfs.ko
kernel/net/9p/9pnet.ko:
kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko
kernel/fs/netfs/netfs.ko:
kernel/net/9p/9pnet_virtio.ko: kernel/drivers/virtio/virtio.ko kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/other.ko:
`
	os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(dep), 0o644)
	got, err := moduleOrder(dir, []string{"virtio_pci", "9pnet_virtio", "9p"}) // virtio_pci: built in
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, m := range got {
		pos[modName(m)] = i
	}
	if len(got) != 7 {
		t.Fatalf("order %v: want the 7 needed modules", got)
	}
	for _, before := range [][2]string{{"virtio_ring", "virtio"}, {"virtio", "9pnet_virtio"}, {"9pnet", "9pnet_virtio"}, {"netfs", "fscache"}, {"fscache", "9p"}, {"9pnet", "9p"}} {
		if pos[before[0]] >= pos[before[1]] {
			t.Errorf("%s must load before %s: %v", before[0], before[1], got)
		}
	}
}

func TestCpioUnpacks(t *testing.T) {
	cpio := testsupport.NeedCommand(t, "cpio")
	var buf bytes.Buffer
	err := writeCpio(&buf, []cpioFile{
		{name: "bin", mode: cpioDir | 0o755},
		{name: "bin/x", mode: cpioReg | 0o755, data: []byte("abc")},
		{name: "init", mode: cpioReg | 0o755, data: []byte(guestInit)},
	})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cmd := exec.Command("sh", "-c", "gzip -dc | "+cpio+" -idm --quiet")
	cmd.Dir, cmd.Stdin = dir, &buf
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio: %v: %s", err, out)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "bin", "x")); string(b) != "abc" {
		t.Errorf("bin/x = %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "init")); string(b) != guestInit {
		t.Errorf("init differs")
	}
}

func TestGuestRunQuotes(t *testing.T) {
	spec := sandbox.Spec{
		Hostname: "h'x", Cwd: "/work", Env: []string{"A=it's $HOME"}, Args: []string{"/bin/sh", "-c", "echo 'q'"},
		Mounts: []sandbox.Mount{{Source: "/x", Target: "/in", ReadOnly: true}, {Source: "/y", Target: "/out"}},
	}
	nic := &guestNIC{
		mac: net.HardwareAddr{2, 0, 0, 0, 0, 1}, addr: netip.MustParseAddr("10.121.0.7"), mtu: 1400,
		routes: []guestRoute{{dst: "10.121.0.1/32"}, {dst: "default", via: netip.MustParseAddr("10.121.0.1")}},
		resolv: []byte("nameserver 192.0.2.53\nsearch it's.example\n"),
	}
	for _, tc := range []struct {
		name       string
		nic        *guestNIC
		want, none []string
	}{
		{"network none", nil, []string{`'A=it'\''s $HOME'`, "ro m0 '/root/in'", "m1 '/root/out'", `'echo '\''q'\'''`}, []string{"eth0", "resolv.conf"}},
		{"bridge", nic, []string{
			"disable_ipv6", "ip link set eth0 mtu 1400 up", "ip addr add 10.121.0.7/32 dev eth0",
			"ip route add 10.121.0.1/32 dev eth0", "ip route add default via 10.121.0.1 dev eth0",
			`search it'\''s.example`, "remount,bind,ro",
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			run, err := guestRun(spec, tc.nic)
			if err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command("sh", "-n", "-c", run).CombinedOutput()
			if err != nil {
				t.Fatalf("not valid sh: %v: %s\n%s", err, out, run)
			}
			for _, want := range tc.want {
				if !strings.Contains(run, want) {
					t.Errorf("run lacks %s:\n%s", want, run)
				}
			}
			for _, no := range tc.none {
				if strings.Contains(run, no) {
					t.Errorf("run has %s:\n%s", no, run)
				}
			}
		})
	}
	if _, err := guestRun(sandbox.Spec{Mounts: []sandbox.Mount{{Source: "/x", Target: "../etc"}}}, nil); err == nil {
		t.Error("relative mount target accepted")
	}
}

func TestVersionLess(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"/boot/vmlinuz-6.1.0-9-amd64", "/boot/vmlinuz-6.1.0-10-amd64", true},
		{"/boot/vmlinuz-6.1.0-10-amd64", "/boot/vmlinuz-6.1.0-9-amd64", false},
		{"/boot/vmlinuz-5.10.0-20-amd64", "/boot/vmlinuz-6.1.0-1-amd64", true},
		{"/boot/vmlinuz-6.1.0-1-amd64", "/boot/vmlinuz-6.1.0-1-amd64", false},
	} {
		t.Run(tc.a+" < "+tc.b, func(t *testing.T) {
			if got := versionLess(tc.a, tc.b); got != tc.want {
				t.Errorf("versionLess = %v, want %v", got, tc.want)
			}
		})
	}
}
