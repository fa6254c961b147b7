package sandbox

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/kiln-build/kiln/cache"
	"github.com/kiln-build/kiln/errdefs"
)

// Request is one run as the host sees it: everything resolved (the image
// to a snapshot, inputs to local files), nothing left to look up.
type Request struct {
	RunID    string
	Job      string
	Attempt  int
	Snapshot string // "image@version", from the image manager
	Arch     string // canonical arch of the snapshot
	Script   string
	Env      map[string]string // the job's own env; KILN_* are added
	Timeout  time.Duration     // 0: no timeout
	Resources
	// Inputs maps a path under /in to a local file whose content must hash
	// to SHA256 (verified while copying, before the sandbox starts).
	Inputs []InputFile
	// HostTools maps a name to a host directory mounted read-only at
	// /host/<name>: the tools the job named (SelectHostTools), no others.
	HostTools map[string]string
	// Caches are the host's caches the job named (SelectCaches): each is
	// seen at its target through a layer of this run's, merged into the
	// cache only if the run succeeds.
	Caches []cache.Def
	// CacheOwner is the owner of the run (cache.ValidOwner): a cache that
	// is not shared keeps a tree per owner, and the run sees its own.
	CacheOwner string
	Artifacts  []string // globs under /out; empty: all
	// OutDir receives the collected artifacts. Empty: not collected.
	OutDir string
	// Console receives the console live (a terminal, a shipper). May be nil.
	Console io.Writer
	// Reattach resumes a run whose sandbox a previous process started and
	// left running when it died: no new clone, inputs or start; the
	// console spool is appended to; the timeout counts from the reattach.
	Reattach bool
	// Hooks are the host's hooks this run asked for (see SelectHooks), run
	// on the host in this order within each stage.
	Hooks []Hook
	// User is "uid[:gid]" (numeric) the job runs as; "" is root. /out, and
	// /work with Cwd, are handed to that user before the sandbox starts.
	User string
	// Umask (octal, e.g. "002") is set before the script runs; "" keeps
	// the launcher's (022).
	Umask string
	// Cwd is the job's working directory, /work or below it (created);
	// "" is /work.
	Cwd string
	// Hostname of the sandbox; "" is the run ID.
	Hostname string
	// Vary are a reproduce group member's variations beyond the above.
	Vary Variations
	// Isolation is the tier the job asked for (names.Isolation*); "" is
	// names.IsolationContainer. A tier the launcher does not offer is
	// refused before anything is made.
	Isolation string
	// Cloned, when set, is called once the run's clone exists (or could
	// not be made); the worker holds the image against deletion until then.
	Cloned func()
}

// InputFile is one input ready on the host.
type InputFile struct {
	Path   string // relative path under /in
	Source string // local file
	SHA256 string
}

// Result is how a run ended.
type Result struct {
	Exit      Exit
	TimedOut  bool
	Cancelled bool
	Artifacts []Artifact
	// ConsolePath is the spool file; it lives until Runner.Forget.
	ConsolePath      string
	ConsoleTruncated bool
	Started, Ended   time.Time
	// Checks are the hooks that ran (or were due and could not), in order.
	Checks []Check
}

// ExitCode is the code `kiln exec` exits with: the job's own, 124 for a
// timeout (like timeout(1)), 128+n for a signal.
func (r Result) ExitCode() int {
	if r.TimedOut {
		return 124
	}
	return r.Exit.Code
}

// Describe is a short human account of the end of the run.
func (r Result) Describe() string {
	switch {
	case r.TimedOut:
		return "timed out"
	case r.Cancelled:
		return "cancelled"
	case r.Exit.OOMKilled && r.Exit.Signal != "":
		return "killed by " + r.Exit.Signal + " (out of memory)"
	case r.Exit.OOMKilled:
		return "exit code " + strconv.Itoa(r.Exit.Code) + " (a process was killed: out of memory)"
	case r.Exit.Signal != "":
		return "killed by " + r.Exit.Signal
	default:
		return "exit code " + strconv.Itoa(r.Exit.Code)
	}
}

// placeInputs copies each input under dir, verifying its sha256, and makes
// the tree read-only.
func placeInputs(dir string, inputs []InputFile) error {
	for _, in := range inputs {
		rel := filepath.FromSlash(in.Path)
		if !filepath.IsLocal(rel) {
			return fmt.Errorf("input %q: path leaves /in: %w", in.Path, errdefs.ErrInvalid)
		}
		dst := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if err := copyVerified(in.Source, dst, in.SHA256); err != nil {
			return fmt.Errorf("input %s: %w", in.Path, err)
		}
	}
	return nil
}

func copyVerified(src, dst, want string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return err
	}
	h := sha256.New()
	_, err = io.Copy(io.MultiWriter(out, h), in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); want != "" && got != want {
		os.Remove(dst)
		return fmt.Errorf("%w: announced %s, file has %s", ErrChecksum, want, got)
	}
	return nil
}

// SelectHostTools returns the host tools a job names, from those the host
// defines; a name the host does not define is refused. Only these are
// mounted: a job sees no tool it did not ask for.
func SelectHostTools(defined map[string]string, names []string) (map[string]string, error) {
	out := make(map[string]string, len(names))
	for _, n := range names {
		dir, ok := defined[n]
		if !ok {
			return nil, fmt.Errorf("job asks for host tool %q, which this host does not define: %w", n, errdefs.ErrNotFound)
		}
		out[n] = dir
	}
	return out, nil
}
