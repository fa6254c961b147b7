package treestore

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// copySparse copies the file src to the new file dst, sharing blocks where
// the filesystem can (FICLONE) and otherwise copying only src's data
// extents, so holes stay holes: what `cp --sparse=always --reflink=auto`
// does for a disk image, without starting a process for every clone.
func copySparse(src, dst string) (retErr error) {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if err := out.Close(); retErr == nil {
			retErr = err
		}
		if retErr != nil {
			_ = os.Remove(dst)
		}
	}()
	if unix.IoctlFileClone(int(out.Fd()), int(in.Fd())) == nil {
		return nil
	}
	size := fi.Size()
	for off := int64(0); off < size; {
		data, err := unix.Seek(int(in.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) { // nothing but a hole up to the end
			break
		}
		if err != nil {
			return fmt.Errorf("copy %s: %w", src, err)
		}
		hole, err := unix.Seek(int(in.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("copy %s: %w", src, err)
		}
		if _, err := in.Seek(data, io.SeekStart); err != nil {
			return err
		}
		if _, err := out.Seek(data, io.SeekStart); err != nil {
			return err
		}
		// io.CopyN uses copy_file_range between two files.
		if _, err := io.CopyN(out, in, hole-data); err != nil {
			return fmt.Errorf("copy %s: %w", src, err)
		}
		off = hole
	}
	return out.Truncate(size)
}

// mountLoop attaches img to a free loop device that detaches itself once
// unmounted (autoclear, as `mount -o loop` sets it) and mounts it at mnt
// as fstype with flags and data (the filesystem's options): the work of
// `mount -o loop`, without its process.
func mountLoop(img, mnt, fstype string, flags uintptr, data string) error {
	f, err := os.OpenFile(img, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("loop device: %w", err)
	}
	defer ctl.Close()
	// Another process may take the free device between the two calls:
	// then the attach says EBUSY, and the next free one is asked for.
	for range 20 {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return fmt.Errorf("loop device: %w", err)
		}
		dev := "/dev/loop" + strconv.Itoa(n)
		lf, err := os.OpenFile(dev, os.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("loop device: %w", err)
		}
		cfg := unix.LoopConfig{Fd: uint32(f.Fd())} //nolint:gosec // G115: a file descriptor is a small int
		cfg.Info.Flags = unix.LO_FLAGS_AUTOCLEAR
		copy(cfg.Info.File_name[:len(cfg.Info.File_name)-1], img)
		err = unix.IoctlLoopConfigure(int(lf.Fd()), &cfg)
		if errors.Is(err, unix.EBUSY) {
			lf.Close()
			continue
		}
		if err != nil {
			lf.Close()
			return fmt.Errorf("attach %s to %s: %w", img, dev, err)
		}
		err = unix.Mount(dev, mnt, fstype, flags, data)
		// With the mount holding the device, this close leaves it
		// attached until the unmount; without, it detaches it.
		lf.Close()
		if err != nil {
			return fmt.Errorf("mount %s (%s) at %s: %w", dev, img, mnt, err)
		}
		return nil
	}
	return fmt.Errorf("attach %s: no free loop device stayed free", img)
}
