package sandbox

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"regexp"
	"strings"
	"syscall"

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
	// NoASLR runs the job without address-space randomisation, Uname26
	// has uname(2) report a 2.6 kernel (personality flags); a launcher
	// that cannot set them says so on the console.
	NoASLR, Uname26 bool
	// UserName and GroupName, when set, are the names the job's uid and
	// gid have in the clone's /etc/passwd and /etc/group.
	UserName, GroupName string
	// Clock, when set, is how far ahead the run's clock is, in
	// libfaketime's form ("+398d"); see vary_time.go.
	Clock string
}

var accountRe = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)

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
	case v.Clock != "" && !clockRe.MatchString(v.Clock):
		return fmt.Errorf("clock %q: want +<days>d: %w", v.Clock, errdefs.ErrInvalid)
	case (v.UserName == "") != (v.GroupName == ""):
		return fmt.Errorf("user %q, group %q: want both names or neither: %w", v.UserName, v.GroupName, errdefs.ErrInvalid)
	case v.UserName != "" && (!accountRe.MatchString(v.UserName) || !accountRe.MatchString(v.GroupName)):
		return fmt.Errorf("user %q, group %q: want names of a-z, 0-9, '_' and '-': %w", v.UserName, v.GroupName, errdefs.ErrInvalid)
	}
	return nil
}

// applyToClone makes the clone at root what v says of its files: $HOME
// made and handed to the job's user, /bin/sh pointing at the shell, the
// names of the job's uid and gid (home is its $HOME). All through an
// os.Root, so a link the image holds never leads out of the clone. It
// says what it could not apply.
func (v Variations) applyToClone(root string, uid, gid uint32, home string) (notes []string, err error) {
	if v.Home == "" && v.Shell == "" && v.UserName == "" {
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
	if v.UserName != "" {
		// First in the file: getpwuid and getgrgid return the first
		// entry of an id, so the job's ids have these names, while the
		// image's names (root...) still resolve to their ids.
		user := fmt.Sprintf("%s:x:%d:%d:%s:%s:/bin/sh\n", v.UserName, uid, gid, v.UserName, home)
		if err := prependLine(r, "etc/passwd", user); err != nil {
			return nil, fmt.Errorf("user_group: %w", err)
		}
		if err := prependLine(r, "etc/group", fmt.Sprintf("%s:x:%d:\n", v.GroupName, gid)); err != nil {
			return nil, fmt.Errorf("user_group: %w", err)
		}
	}
	return nil, nil
}

// maxAccountFile bounds the image's /etc/passwd or /etc/group read.
const maxAccountFile = 4 << 20

// prependLine replaces the clone's file name by line followed by its old
// content (none when it has no such file): a new regular file, renamed
// over the old, so a link at name is replaced, never followed.
func prependLine(r *os.Root, name, line string) error {
	old, err := readBounded(r, name)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if len(old) > 0 && old[len(old)-1] != '\n' {
		old = append(old, '\n')
	}
	if err := r.MkdirAll(path.Dir(name), 0o755); err != nil {
		return err
	}
	tmp := name + ".kiln-vary"
	f, err := r.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(append([]byte(line), old...))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = r.Rename(tmp, name)
	}
	if err != nil {
		_ = r.Remove(tmp)
	}
	return err
}

// readBounded reads the file name of r, at most maxAccountFile bytes. A
// link is followed within the clone only (an image's /etc/passwd may be
// one; an absolute one is the clone's path, as inside the sandbox); what
// is not a regular file counts as empty, and is not opened for long (no
// FIFO blocks the run).
func readBounded(r *os.Root, name string) ([]byte, error) {
	if target, err := r.Readlink(name); err == nil && path.IsAbs(target) {
		name = strings.TrimPrefix(path.Clean(target), "/")
	}
	f, err := r.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, nil
	}
	if st.Size() > maxAccountFile {
		return nil, fmt.Errorf("%s: %d bytes, more than %d", name, st.Size(), maxAccountFile)
	}
	return io.ReadAll(io.LimitReader(f, maxAccountFile))
}
