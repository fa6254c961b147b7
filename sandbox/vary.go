package sandbox

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"regexp"
	"strings"

	"github.com/kiln-build/kiln/errdefs"
)

// Variations are what a reproduce group member varies beyond the env,
// user, umask, working directory and hostname of its Request
// (docs/reproducibility.md). The zero value varies nothing.
type Variations struct {
	// CPUs > 0: the sandbox may use, and sees, that many of the host's
	// CPUs (fewer when the host has fewer).
	CPUs int
	// Domain is the sandbox's NIS domain name; "" is the launcher's.
	Domain string
	// Home is the job's $HOME, below /home, made for the job's user.
	Home string
	// Shell is what /bin/sh runs, "dash" or "bash": /bin/sh of the clone
	// becomes a link to it when the image has /bin/<Shell>.
	Shell string
}

var homeRe = regexp.MustCompile(`^/home(/[A-Za-z0-9._-]+)+$`)

// check refuses values no runner may apply (the worker checked them
// already; `kiln exec` and tests reach here directly).
func (v Variations) check() error {
	switch {
	case v.CPUs < 0:
		return fmt.Errorf("cpus %d: %w", v.CPUs, errdefs.ErrInvalid)
	case v.Home != "" && (!homeRe.MatchString(v.Home) || path.Clean(v.Home) != v.Home || strings.Contains(v.Home, "/..")):
		return fmt.Errorf("home %q: want a clean path below /home: %w", v.Home, errdefs.ErrInvalid)
	case v.Shell != "" && v.Shell != "dash" && v.Shell != "bash":
		return fmt.Errorf("shell %q: want dash or bash: %w", v.Shell, errdefs.ErrInvalid)
	}
	return nil
}

// applyToClone makes the clone at root what v says of its files: $HOME
// made and handed to the job's user, /bin/sh pointing at the shell. All
// through an os.Root, so a link the image holds never leads out of the
// clone. It says what it could not apply.
func (v Variations) applyToClone(root string, uid, gid uint32) (notes []string, err error) {
	if v.Home == "" && v.Shell == "" {
		return nil, nil
	}
	r, err := os.OpenRoot(root)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	if v.Home != "" {
		rel := strings.TrimPrefix(v.Home, "/")
		if err := r.MkdirAll(rel, 0o755); err != nil {
			return nil, fmt.Errorf("home %s: %w", v.Home, err)
		}
		if err := r.Lchown(rel, int(uid), int(gid)); err != nil {
			return nil, fmt.Errorf("home %s: %w", v.Home, err)
		}
	}
	if v.Shell != "" {
		if _, err := r.Stat("bin/" + v.Shell); errors.Is(err, fs.ErrNotExist) {
			return []string{"variation shell: the image has no /bin/" + v.Shell + ", /bin/sh is the image's"}, nil
		} else if err != nil {
			return nil, fmt.Errorf("shell %s: %w", v.Shell, err)
		}
		if err := r.Remove("bin/sh"); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("shell %s: %w", v.Shell, err)
		}
		if err := r.Symlink(v.Shell, "bin/sh"); err != nil {
			return nil, fmt.Errorf("shell %s: %w", v.Shell, err)
		}
	}
	return nil, nil
}
