// Package names holds the rules for the names and paths that cross kiln's
// boundaries (job, image, hook, label and run names; image references;
// relative paths under a sandbox directory). It is a leaf package so that
// the host side (sandbox, storage backends) and the wire side (api) check
// them alike without importing each other.
package names

import (
	"errors"
	"path"
	"regexp"
	"strings"
)

var nameRe = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$`)

// Valid reports whether s is a valid job, image, hook or label name:
// letters, digits, '.', '_', '-', starting with a letter or digit, no "..",
// at most 63 characters. Such a name is safe as one path element.
func Valid(s string) bool { return nameRe.MatchString(s) && !strings.Contains(s, "..") }

var cacheOwnerRe = regexp.MustCompile(`^[0-9a-f]{32}$`)

// ValidCacheOwner reports whether s has the shape of the key a server
// sends as a run's cache owner (api.CacheOwner: 32 lowercase hex digits),
// which the host joins into a cache's path.
func ValidCacheOwner(s string) bool { return cacheOwnerRe.MatchString(s) }

// ValidImageRef accepts "name" or "name@version".
func ValidImageRef(s string) bool {
	name, ver, pinned := strings.Cut(s, "@")
	if !Valid(name) {
		return false
	}
	return !pinned || Valid(ver)
}

// ValidRelPath accepts a clean relative slash path that stays below its root.
func ValidRelPath(p string) error {
	switch {
	case p == "":
		return errors.New("empty path")
	case path.IsAbs(p) || strings.HasPrefix(p, "\\"):
		return errors.New("absolute path")
	case HasDotDot(p):
		return errors.New("path escapes with '..'")
	case path.Clean(p) != p:
		return errors.New("path is not clean")
	case strings.ContainsRune(p, 0):
		return errors.New("NUL in path")
	}
	return nil
}

// HasDotDot reports whether any element of the slash path p is "..".
func HasDotDot(p string) bool {
	for _, e := range strings.Split(p, "/") {
		if e == ".." {
			return true
		}
	}
	return false
}

// Isolation tiers, as the job file's `isolation` key and a host's facts
// name them (api re-exports them as api.Isolation*).
const (
	IsolationContainer = "container"
	IsolationGVisor    = "gvisor"
	IsolationVM        = "vm"
)
