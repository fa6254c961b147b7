package images

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

var debArchRe = regexp.MustCompile(`^[a-z0-9]+$`)

// ForeignBusybox returns the path of Debian's static busybox for arch (a
// Debian architecture name such as arm64 or s390x), downloading the
// busybox-static package of that arch into cacheDir/<arch> on first use.
//
// It never touches the host's dpkg or apt state: apt-get runs with its
// architecture, package lists and archive cache redirected into the cache
// directory, using the host's apt sources, and the package is unpacked with
// dpkg -x, not installed. The download happens in a scratch directory that
// is renamed into place, so concurrent callers (tests of several packages)
// cannot see a half-unpacked tree. ctx cancels apt-get and dpkg.
func ForeignBusybox(ctx context.Context, arch, cacheDir string) (string, error) {
	if !debArchRe.MatchString(arch) {
		return "", fmt.Errorf("foreign busybox: bad architecture %q", arch)
	}
	dir := filepath.Join(cacheDir, arch)
	bin := filepath.Join(dir, "root", "bin", "busybox")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(cacheDir, "."+arch+"-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	for _, d := range []string{"lists/partial", "cache/archives/partial", "dl"} {
		if err := os.MkdirAll(filepath.Join(tmp, d), 0o755); err != nil {
			return "", err
		}
	}
	opts := []string{
		"-oAPT::Architecture=" + arch,
		"-oAPT::Architectures=" + arch,
		"-oDir::State::Lists=" + filepath.Join(tmp, "lists"),
		"-oDir::Cache=" + filepath.Join(tmp, "cache"),
		"-oDebug::NoLocking=1",
		"-qq",
	}
	run := func(wd string, name string, args ...string) error {
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Dir = wd
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("foreign busybox %s: %s %s: %w: %s", arch, name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	if err := run(tmp, "apt-get", append(opts, "update")...); err != nil {
		return "", err
	}
	dl := filepath.Join(tmp, "dl")
	if err := run(dl, "apt-get", append(opts, "download", "busybox-static")...); err != nil {
		return "", err
	}
	debs, err := filepath.Glob(filepath.Join(dl, "busybox-static_*.deb"))
	if err != nil || len(debs) != 1 {
		return "", fmt.Errorf("foreign busybox %s: want one downloaded busybox-static .deb, found %d", arch, len(debs))
	}
	if err := run(tmp, "dpkg", "-x", debs[0], filepath.Join(tmp, "root")); err != nil {
		return "", err
	}
	if _, err := os.Stat(filepath.Join(tmp, "root", "bin", "busybox")); err != nil {
		return "", fmt.Errorf("foreign busybox %s: package has no bin/busybox: %w", arch, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	// Whoever renames first wins; a loser finds the winner's tree in place.
	if err := os.Rename(filepath.Join(tmp, "root"), filepath.Join(dir, "root")); err != nil {
		if _, serr := os.Stat(bin); serr != nil {
			return "", fmt.Errorf("foreign busybox %s: %w", arch, err)
		}
	}
	return bin, nil
}
