//go:build linux

package testsupport

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Btrfs makes a fresh btrfs filesystem in a sparse file, loop-mounts it
// and returns the mount point. Cleanup unmounts it (lazily if something
// still holds it) and detaches the loop device. Needs root, mkfs.btrfs
// and the btrfs module.
func Btrfs(t testing.TB) (mountpoint string) {
	t.Helper()
	NeedRoot(t)
	NeedCommand(t, "mkfs.btrfs")
	NeedCommand(t, "losetup")
	dir := t.TempDir()
	img := filepath.Join(dir, "btrfs.img")
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	// 256 MiB: mkfs.btrfs's minimum for mixed-free layouts is ~114 MiB.
	err = f.Truncate(256 << 20)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.btrfs", "-q", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.btrfs: %v: %s", err, out)
	}
	// losetup rather than mount -o loop, so cleanup knows which device to
	// detach even if the mount is gone.
	out, err := exec.Command("losetup", "--find", "--show", img).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "--detach", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup --detach %s: %v: %s", dev, err, out)
		}
	})
	if err := unix.Mount(dev, mnt, "btrfs", 0, ""); err != nil {
		modprobe := exec.Command("modprobe", "btrfs").Run()
		Need(t, modprobe == nil, "btrfs kernel module")
		if err := unix.Mount(dev, mnt, "btrfs", 0, ""); err != nil {
			t.Fatalf("mount %s on %s: %v", dev, mnt, err)
		}
	}
	t.Cleanup(func() {
		if err := unix.Unmount(mnt, 0); err != nil {
			t.Errorf("unmount %s: %v (detaching lazily)", mnt, err)
			_ = unix.Unmount(mnt, unix.MNT_DETACH)
		}
	})
	return mnt
}
