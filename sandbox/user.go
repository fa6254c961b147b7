package sandbox

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/kiln-build/kiln/errdefs"
)

// ParseUser parses "uid[:gid]" (numeric); "" is root (0, 0). A missing gid
// is the uid.
func ParseUser(s string) (uid, gid uint32, err error) {
	if s == "" {
		return 0, 0, nil
	}
	u, g, hasGID := strings.Cut(s, ":")
	uv, err := strconv.ParseUint(u, 10, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("user %q: want uid[:gid] (numbers): %w", s, errdefs.ErrInvalid)
	}
	gv := uv
	if hasGID {
		if gv, err = strconv.ParseUint(g, 10, 32); err != nil {
			return 0, 0, fmt.Errorf("user %q: want uid[:gid] (numbers): %w", s, errdefs.ErrInvalid)
		}
	}
	return uint32(uv), uint32(gv), nil
}

var umaskRe = regexp.MustCompile(`^0?[0-7]{3}$`)

// prepareWork creates the job's working directory and an empty /out in the
// clone and, for a job that runs as another user, hands /work, the working
// directory and /out to it, so that an unprivileged job can write where a
// root job can. It returns the working directory inside the sandbox.
func prepareWork(root string, req Request) (string, error) {
	uid, gid, err := ParseUser(req.User)
	if err != nil {
		return "", err
	}
	cwd, err := jobCwd(req)
	if err != nil {
		return "", err
	}
	work := filepath.Join(root, "work")
	// The clone's own /work (if the image has one) must be a directory
	// of the clone, not a link out of it.
	if fi, err := os.Lstat(work); err == nil && !fi.IsDir() {
		return "", fmt.Errorf("prepare /work: not a directory in the image: %w", errdefs.ErrInvalid)
	}
	dirs := []string{work}
	for p := strings.TrimPrefix(cwd, "/work"); p != "" && p != "/"; p = path.Dir(p) {
		dirs = append(dirs, filepath.Join(work, filepath.FromSlash(p)))
	}
	if err := os.MkdirAll(filepath.Join(root, filepath.FromSlash(cwd)), 0o755); err != nil {
		return "", fmt.Errorf("prepare %s: %w", cwd, err)
	}
	// Whatever the image holds at /out (a link out of the clone, even) is
	// not the job's output: /out starts empty.
	outDir := filepath.Join(root, "out")
	if err := os.RemoveAll(outDir); err != nil {
		return "", fmt.Errorf("prepare /out: %w", err)
	}
	if err := os.Mkdir(outDir, 0o755); err != nil {
		return "", fmt.Errorf("prepare /out: %w", err)
	}
	if uid == 0 && gid == 0 {
		return cwd, nil
	}
	for _, d := range append(dirs, outDir) {
		// Lchown: never follow a link the image may hold.
		if err := os.Lchown(d, int(uid), int(gid)); err != nil {
			return "", fmt.Errorf("hand %s to %d:%d: %w", d, uid, gid, err)
		}
	}
	return cwd, nil
}

// jobCwd checks req's umask and working directory and returns the latter
// inside the sandbox ("/work" when req has none).
func jobCwd(req Request) (string, error) {
	if req.Umask != "" && !umaskRe.MatchString(req.Umask) {
		return "", fmt.Errorf("umask %q: want octal like 022: %w", req.Umask, errdefs.ErrInvalid)
	}
	cwd := "/work"
	if req.Cwd != "" {
		cwd = path.Clean(req.Cwd)
		if cwd != "/work" && !strings.HasPrefix(cwd, "/work/") {
			return "", fmt.Errorf("cwd %q: must be /work or below it: %w", req.Cwd, errdefs.ErrInvalid)
		}
	}
	return cwd, nil
}
