package vm

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-build/kiln/internal/testsupport"
	"github.com/kiln-build/kiln/sandbox"
)

// The guests themselves are booted by cmd/kiln's TestExecVM (through
// `kiln exec`, which is what a user runs); these tests cover what kiln
// prepares for them.

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
	run, err := guestRun(sandbox.Spec{
		Hostname: "h'x", Cwd: "/work", Env: []string{"A=it's $HOME"}, Args: []string{"/bin/sh", "-c", "echo 'q'"},
		Mounts: []sandbox.Mount{{Source: "/x", Target: "/in", ReadOnly: true}, {Source: "/y", Target: "/out"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("sh", "-n", "-c", run).CombinedOutput()
	if err != nil {
		t.Fatalf("not valid sh: %v: %s\n%s", err, out, run)
	}
	for _, want := range []string{`'A=it'\''s $HOME'`, "ro m0 '/root/in'", "m1 '/root/out'", `'echo '\''q'\'''`} {
		if !strings.Contains(run, want) {
			t.Errorf("run lacks %s:\n%s", want, run)
		}
	}
	if _, err := guestRun(sandbox.Spec{Mounts: []sandbox.Mount{{Source: "/x", Target: "../etc"}}}); err == nil {
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
