package sandbox

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/internal/mounts"
)

// mountOverlay mounts an overlay of lower and upper at merged, nodev and
// nosuid: nothing a job writes into its layer becomes a device or a
// setuid binary on the host.
func mountOverlay(lower, upper, work, merged string) error {
	for _, p := range []string{lower, upper, work} {
		if strings.ContainsAny(p, ",:") {
			return fmt.Errorf("overlay path %q has a ',' or ':': %w", p, errdefs.ErrInvalid)
		}
	}
	opts := "lowerdir=" + lower + ",upperdir=" + upper + ",workdir=" + work
	if err := unix.Mount("overlay", merged, "overlay", unix.MS_NODEV|unix.MS_NOSUID, opts); err != nil {
		return fmt.Errorf("mount overlay at %s: %w", merged, err)
	}
	return nil
}

// unmountCaches unmounts every cache layer of the run in dir. A run that
// named no cache has no caches dir and costs one lstat, not a read of the
// mount table.
func unmountCaches(dir string) error {
	d := filepath.Join(dir, "caches")
	if _, err := os.Lstat(d); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return mounts.UnmountBelow(d)
}
