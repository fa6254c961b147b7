package images

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// rootfsDirs are created in every rootfs kiln builds itself; /in, /out,
// /work and /host are the sandbox's mount points.
var rootfsDirs = []string{"bin", "sbin", "usr/bin", "usr/sbin", "etc", "tmp", "proc", "sys", "dev", "root", "var/tmp", "in", "out", "work", "host"}

// WriteBusyboxRootfs lays out a minimal root filesystem in dir from a static
// busybox binary: the binary at /bin/busybox, a symlink per applet, and the
// few files in /etc that tools expect. The applet list comes from the host's
// own busybox when the given one is of a foreign arch and cannot run here.
func WriteBusyboxRootfs(dir, busybox string) error {
	for _, d := range rootfsDirs {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.Chmod(filepath.Join(dir, "tmp"), 0o1777); err != nil {
		return err
	}
	if err := copyFile(busybox, filepath.Join(dir, "bin", "busybox"), 0o755); err != nil {
		return fmt.Errorf("copy busybox: %w", err)
	}
	applets, err := busyboxApplets(busybox)
	if err != nil {
		return err
	}
	for _, a := range applets {
		if a == "busybox" || strings.ContainsAny(a, "/.") {
			continue
		}
		link := filepath.Join(dir, "bin", a)
		if err := os.Symlink("busybox", link); err != nil && !os.IsExist(err) {
			return err
		}
	}
	files := map[string]string{ //nolint:gosec // G101: /etc/passwd and /etc/shadow of the image, no secret
		"etc/passwd":      "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
		"etc/group":       "root:x:0:\nnogroup:x:65534:\n",
		"etc/hosts":       "127.0.0.1 localhost\n::1 localhost\n",
		"etc/resolv.conf": "",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func busyboxApplets(busybox string) ([]string, error) {
	out, err := exec.Command(busybox, "--list").Output()
	if err != nil {
		// A foreign-arch binary without a binfmt handler: ask the host's.
		host, lerr := exec.LookPath("busybox")
		if lerr != nil {
			return nil, fmt.Errorf("list busybox applets: %w", err)
		}
		if out, err = exec.Command(host, "--list").Output(); err != nil {
			return nil, fmt.Errorf("list busybox applets: %w", err)
		}
	}
	return strings.Fields(string(bytes.TrimSpace(out))), nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
