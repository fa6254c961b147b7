package api

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode"

	"github.com/kiln-build/kiln/names"
)

// ErrInvalidAssignment wraps every reason a worker refuses a lease's
// Assignment.
var ErrInvalidAssignment = errors.New("invalid assignment")

var (
	runIDRe    = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
	hostnameRe = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$`)
	umaskRe    = regexp.MustCompile(`^0?[0-7]{3}$`)
	userRe     = regexp.MustCompile(`^[0-9]{1,10}(:[0-9]{1,10})?$`)
	digitsRe   = regexp.MustCompile(`^[0-9]{1,19}$`)
	// clockOffsetRe is a time variation: days ahead, libfaketime's form.
	clockOffsetRe = regexp.MustCompile(`^\+[1-9][0-9]{0,4}d$`)
	serverIDRe    = regexp.MustCompile(`^[0-9a-f]{16}$`)
	// accountRe is a user or group name that is safe in /etc/passwd and
	// /etc/group (no ':' or newline) and portable (useradd's default).
	accountRe = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)
)

// CacheOwner is the key an assignment carries for owner (the server's
// owner key of the job: "admin", "token:NAME", "group:NAME"): 32 lowercase
// hex digits of a hash of it and the server's id, so that a worker can
// name a directory after it without trusting its text, and the same name
// on another server is another owner.
func CacheOwner(serverID, owner string) string {
	h := sha256.Sum256([]byte("kiln cache owner\x00" + serverID + "\x00" + owner))
	return hex.EncodeToString(h[:16])
}

// ValidCacheOwner reports whether s has the shape of CacheOwner's keys
// (names.ValidCacheOwner, which the host's cache checks too).
func ValidCacheOwner(s string) bool { return names.ValidCacheOwner(s) }

// ValidServerID reports whether s has the shape of a server's identity
// (16 lowercase hex digits, as the scheduler makes it). A worker joins the
// id into the paths of its lease records, staging and run directories,
// and a hostile or spoofed server chooses it: an id of another shape is
// refused wherever it comes in (enroll, heartbeat, assignment).
func ValidServerID(s string) bool { return serverIDRe.MatchString(s) }

// ValidRunID reports whether s can name a run on a host (its files,
// container and task): 1 to 63 of a-z, 0-9 and '-', not starting with '-'.
func ValidRunID(s string) bool { return runIDRe.MatchString(s) }

// ValidHostname reports whether s can be a sandbox's hostname: at most 63
// characters (the kernel's limit is 64 with the NUL), dot-separated labels
// of letters, digits and '-' that neither start nor end with '-'.
func ValidHostname(s string) bool { return len(s) <= 63 && hostnameRe.MatchString(s) }

// maxVariation bounds one variation's value.
const maxVariation = 256

// Validate checks everything a worker takes from an assignment, before it
// uses any of it: a worker does not trust its server with the host's
// filesystem. The server ID has its fixed shape, the run ID becomes file
// and container names, the job passes the same Job.Validate the server
// runs, variations are known keys with
// well-formed values (cwd clean and under /work, hostname a valid name),
// and a diffoscope task names valid runs, clean relative paths and
// sha256s. Errors wrap ErrInvalidAssignment.
func (a *Assignment) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrInvalidAssignment}, args...)...)
	}
	switch {
	case !ValidServerID(a.ServerID):
		return bad("server id %.80q: want 16 lowercase hex digits", a.ServerID)
	case !ValidRunID(a.RunID):
		return bad("run id %q: want 1 to 63 of a-z, 0-9 and '-'", a.RunID)
	case a.Owner != "" && !ValidCacheOwner(a.Owner):
		return bad("run %s: owner %.80q: want 32 lowercase hex digits", a.RunID, a.Owner)
	case a.Fence == "" || len(a.Fence) > 128 || strings.ContainsFunc(a.Fence, notPrintable):
		return bad("run %s: fence %q: want 1 to 128 printable characters", a.RunID, a.Fence)
	case a.Attempt < 1:
		return bad("run %s: attempt %d: want 1 or more", a.RunID, a.Attempt)
	case a.LogOffset < 0:
		return bad("run %s: negative log offset %d", a.RunID, a.LogOffset)
	case a.Member < 0:
		return bad("run %s: negative group member %d", a.RunID, a.Member)
	case a.Group != "" && !names.Valid(a.Group):
		return bad("run %s: group %q is not a valid name", a.RunID, a.Group)
	}
	if err := a.Job.Validate(); err != nil {
		return bad("run %s: %w", a.RunID, err)
	}
	for k, v := range a.Variations {
		if err := validVariation(k, v); err != nil {
			return bad("run %s: variation %s: %v", a.RunID, k, err)
		}
	}
	if a.Image != nil {
		if err := a.Image.Check(); err != nil {
			return bad("run %s: %v", a.RunID, err)
		}
	}
	if err := a.validateNeeds(); err != nil {
		return bad("run %s: %w", a.RunID, err)
	}
	if t := a.Diffoscope; t != nil {
		if !names.Valid(t.Group) || !ValidRunID(t.RunA) || !ValidRunID(t.RunB) {
			return bad("run %s: diffoscope task names group %q, runs %q and %q", a.RunID, t.Group, t.RunA, t.RunB)
		}
		for _, f := range t.Files {
			if err := names.ValidRelPath(f.Path); err != nil {
				return bad("run %s: diffoscope file %q: %v", a.RunID, f.Path, err)
			}
			for _, sha := range []string{f.SHA256A, f.SHA256B} {
				if sha != "" && !ValidSHA256(sha) {
					return bad("run %s: diffoscope file %q: sha256 %q: want 64 lowercase hex digits", a.RunID, f.Path, sha)
				}
			}
		}
	}
	return nil
}

func validVariation(k, v string) error {
	if len(v) > maxVariation || strings.ContainsFunc(v, notPrintable) {
		return fmt.Errorf("value %q: want at most %d printable characters", v, maxVariation)
	}
	switch k {
	case VariationUmask:
		if !umaskRe.MatchString(v) {
			return fmt.Errorf("%q: want octal like 022", v)
		}
	case VariationUser:
		if !userRe.MatchString(v) {
			return fmt.Errorf("%q: want uid[:gid] (numbers)", v)
		}
	case VariationCwd:
		if v != path.Clean(v) || (v != "/work" && !strings.HasPrefix(v, "/work/")) {
			return fmt.Errorf("%q: want a clean path, /work or below it", v)
		}
	case VariationHostname:
		if !ValidHostname(v) {
			return fmt.Errorf("%.80q: want at most 63 characters of dot-separated labels (letters, digits, '-')", v)
		}
	case VariationCPUs:
		if n, err := strconv.Atoi(v); err != nil || n < 1 || n > 1024 || strconv.Itoa(n) != v {
			return fmt.Errorf("%q: want a CPU count, 1 to 1024", v)
		}
	case VariationDomain:
		if !ValidHostname(v) {
			return fmt.Errorf("%.80q: want at most 63 characters of dot-separated labels (letters, digits, '-')", v)
		}
	case VariationHome:
		if v != path.Clean(v) || !strings.HasPrefix(v, "/home/") || strings.ContainsAny(v, ":\\") {
			return fmt.Errorf("%q: want a clean path below /home, without ':'", v)
		}
	case VariationShell:
		if v != "dash" && v != "bash" {
			return fmt.Errorf("%q: want dash or bash", v)
		}
	case VariationASLR:
		if v != "off" {
			return fmt.Errorf("%q: want off", v)
		}
	case VariationKernel:
		if v != "uname26" {
			return fmt.Errorf("%q: want uname26", v)
		}
	case VariationUserGroup:
		u, g, ok := strings.Cut(v, ":")
		if !ok || !accountRe.MatchString(u) || !accountRe.MatchString(g) {
			return fmt.Errorf("%q: want USER:GROUP, each 1 to 32 of a-z, 0-9, '_' and '-', starting with a letter or '_'", v)
		}
	case VariationTime:
		if !clockOffsetRe.MatchString(v) {
			return fmt.Errorf("%q: want a clock offset in days, like +398d", v)
		}
	case VariationKept:
		for n := range strings.SplitSeq(v, ",") {
			if !slices.Contains(VariationNames, n) {
				return fmt.Errorf("%q: %q is not a variation name", v, n)
			}
		}
	case "SOURCE_DATE_EPOCH":
		if !digitsRe.MatchString(v) {
			return fmt.Errorf("%q: want seconds since the epoch", v)
		}
	default:
		if !slices.Contains(VariationEnv, k) {
			return errors.New("unknown variation")
		}
	}
	return nil
}

func notPrintable(r rune) bool { return !unicode.IsPrint(r) }
