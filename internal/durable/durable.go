// Package durable writes files so that after a crash or power loss a reader
// finds either the old content or the new, complete one, never a mix.
package durable

import (
	"fmt"
	"os"
	"path/filepath"
)

// WriteFile replaces path with data, mode perm: it writes a temporary file
// in the same directory, fsyncs it, renames it over path and fsyncs the
// directory, so the rename itself survives a power loss. Concurrent writers
// of one path each use their own temporary file; the last rename wins. On
// error path is unchanged and no temporary file is left.
func WriteFile(path string, data []byte, perm os.FileMode) error {
	return replace(path, data, perm, true)
}

// Replace replaces path with data, mode perm, as WriteFile does but
// without its fsyncs: a crash of the process leaves the old file or the
// new one whole (the kernel keeps what was written), a crash of the
// machine may leave neither. For records that mean nothing after a reboot
// (what runs or sandboxes a process had, which a reboot ends anyway), on
// paths where two disk flushes would be a run's wait.
func Replace(path string, data []byte, perm os.FileMode) error {
	return replace(path, data, perm, false)
}

func replace(path string, data []byte, perm os.FileMode, sync bool) (err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("durable write %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(perm); err != nil {
		return fmt.Errorf("durable write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("durable write %s: %w", path, err)
	}
	if sync {
		if err := tmp.Sync(); err != nil {
			return fmt.Errorf("durable write %s: %w", path, err)
		}
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("durable write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("durable write %s: %w", path, err)
	}
	if !sync {
		return nil
	}
	return SyncDir(dir)
}

// SyncDir fsyncs a directory, making renames and creations in it durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	return nil
}
