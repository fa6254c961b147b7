package images

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/qemu"
)

// defaultSuite is debootstrap's -v when none is given.
const defaultSuite = "bookworm"

// methodSpec is a parsed, validated method: what a build runs and what the
// snapshot's metadata records (so that update can run it again).
type methodSpec struct {
	Method   string // busybox | debootstrap | tar | dir | freebsd
	Source   string // tar=/dir= path
	Version  string
	Arch     string // "" for tar=/dir= without -a: detected after extraction
	OS       string
	Packages []string
}

// parseMethod validates a create's method and fills in defaults.
func parseMethod(method, version, arch string, packages []string) (methodSpec, error) {
	kind, src, hasSrc := strings.Cut(method, "=")
	s := methodSpec{Method: kind, Source: src, Version: version, Packages: packages}
	if arch != "" {
		a, err := qemu.Normalize(arch)
		if err != nil {
			return s, err
		}
		s.Arch = a
	}
	switch kind {
	case "busybox", "debootstrap", "freebsd":
		if hasSrc {
			return s, fmt.Errorf("method %q takes no =PATH: %w", kind, errdefs.ErrInvalid)
		}
		if s.Arch == "" {
			s.Arch = qemu.Native()
		}
	case "tar", "dir":
		if src == "" {
			return s, fmt.Errorf("method %s needs a path: -m %s=PATH: %w", kind, kind, errdefs.ErrInvalid)
		}
		abs, err := filepath.Abs(src)
		if err != nil {
			return s, err
		}
		fi, err := os.Stat(abs)
		if err != nil {
			return s, fmt.Errorf("method %s: %w", method, err)
		}
		if kind == "dir" && !fi.IsDir() {
			return s, fmt.Errorf("method %s: not a directory: %w", method, errdefs.ErrInvalid)
		}
		s.Source = abs
	default:
		return s, fmt.Errorf("unknown method %q (want busybox, debootstrap, tar=PATH, dir=PATH or freebsd): %w", method, errdefs.ErrInvalid)
	}
	switch kind {
	case "busybox":
		s.OS = "linux"
	case "debootstrap":
		s.OS = "linux"
		if s.Version == "" {
			s.Version = defaultSuite
		}
	case "freebsd":
		if runtime.GOOS != "freebsd" {
			return s, fmt.Errorf("method freebsd installs FreeBSD dist sets and runs on FreeBSD hosts only (this host runs %s); to store a FreeBSD tree here anyway use -m tar=base.txz: %w", runtime.GOOS, errdefs.ErrUnsupported)
		}
		if s.Version == "" {
			return s, fmt.Errorf("method freebsd needs -v RELEASE, e.g. 14.2-RELEASE: %w", errdefs.ErrInvalid)
		}
		s.OS = "freebsd"
	}
	return s, nil
}

// specFromSnapshot is the method that made s, to run it again on update.
func specFromSnapshot(s Snapshot) (methodSpec, error) {
	if s.Method == Unknown || s.Method == "" {
		return methodSpec{}, fmt.Errorf("%s: no metadata says how it was made, so it cannot be updated (delete and create it again): %w", s.Ref(), errdefs.ErrUnsupported)
	}
	method := s.Method
	if s.Source != "" {
		method += "=" + s.Source
	}
	spec, err := parseMethod(method, s.MethodVersion, s.Arch, s.Packages)
	if err != nil {
		return spec, fmt.Errorf("%s: %w", s.Ref(), err)
	}
	if spec.OS == "" {
		spec.OS = s.OS
	}
	return spec, nil
}

// build runs the method into env.root.
func (s methodSpec) build(ctx context.Context, m *Manager, env *buildEnv) error {
	switch s.Method {
	case "busybox":
		bb := "/bin/busybox"
		if s.Arch != qemu.Native() {
			fmt.Fprintf(env.progress, "fetching busybox-static for %s\n", s.Arch)
			p, err := ForeignBusybox(ctx, s.Arch, filepath.Join(m.opts.CacheDir, "busybox"))
			if err != nil {
				return env.fail("fetch busybox-static for "+s.Arch, err)
			}
			bb = p
		}
		if err := WriteBusyboxRootfs(env.root, bb); err != nil {
			return env.fail("lay out the busybox rootfs", err)
		}
		return nil
	case "debootstrap":
		return debootstrap(ctx, m, env, s)
	case "tar":
		return extractInto(ctx, env, s.Source)
	case "dir":
		fmt.Fprintf(env.progress, "copying %s\n", s.Source)
		return env.run(ctx, "copy "+s.Source, nil, "cp", "-a", s.Source+"/.", env.root)
	case "freebsd":
		sets := append([]string{"base"}, s.Packages...)
		for _, set := range sets {
			file, err := m.distSet(ctx, env, s.Version, set)
			if err != nil {
				return env.fail("fetch dist set "+set, err)
			}
			if err := extractInto(ctx, env, file); err != nil {
				return err
			}
		}
		return nil
	}
	return fmt.Errorf("method %q: %w", s.Method, errdefs.ErrInvalid)
}

func extractInto(ctx context.Context, env *buildEnv, file string) error {
	fmt.Fprintf(env.progress, "extracting %s\n", file)
	opts := ExtractOptions{Progress: func(n int64) {
		fmt.Fprintf(env.progress, "  %s extracted\n", humanBytes(n))
	}}
	if env.meter != nil {
		// A bar of the tarball's bytes read (its size is known, so the
		// bar has a time left) stands in for the lines.
		var total int64 = -1
		if fi, err := os.Stat(file); err == nil {
			total = fi.Size()
		}
		set, end := env.meter.start("extracting "+filepath.Base(file), total)
		defer end()
		opts = ExtractOptions{Read: set}
	}
	st, err := ExtractFile(ctx, file, env.root, opts)
	if err != nil {
		return env.fail("extract "+filepath.Base(file), err)
	}
	fmt.Fprintf(env.log, "extracted %s: %d entries, %d bytes\n", file, st.Entries, st.Bytes)
	return nil
}

// distSet returns a local path of the FreeBSD dist set <set>.txz of
// release: from the directory Options.FreeBSDDist, or downloaded from that
// URL into the cache (dist sets of a release never change, so a cached one
// is reused).
func (m *Manager) distSet(ctx context.Context, env *buildEnv, release, set string) (string, error) {
	dist := m.opts.FreeBSDDist
	if dist == "" {
		return "", errors.New("no FreeBSD dist location: set images.freebsd_dist in the host config to a URL or a directory holding <release>/base.txz")
	}
	name := set + ".txz"
	if !strings.HasPrefix(dist, "http://") && !strings.HasPrefix(dist, "https://") {
		p := filepath.Join(dist, release, name)
		if _, err := os.Stat(p); err != nil {
			return "", err
		}
		return p, nil
	}
	dst := filepath.Join(m.opts.CacheDir, "freebsd", release, name)
	if _, err := os.Stat(dst); err == nil {
		return dst, nil
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return "", err
	}
	url := strings.TrimSuffix(dist, "/") + "/" + release + "/" + name
	fmt.Fprintf(env.progress, "downloading %s\n", url)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+name+"-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	report, end := env.meter.start("downloading "+name, resp.ContentLength)
	defer end()
	if _, err := io.Copy(tmp, &countingReader{r: resp.Body, report: report}); err != nil {
		tmp.Close()
		return "", fmt.Errorf("download %s: %w", url, err)
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	return dst, os.Rename(tmp.Name(), dst)
}

// detectArch reads the ELF header of a well-known binary of the tree at
// root (following its symlinks inside root only) to learn the tree's arch
// and OS, for tar= and dir= images created without -a.
func detectArch(root string) (arch, osName string, err error) {
	for _, cand := range []string{"bin/sh", "bin/busybox", "usr/bin/env", "bin/ls", "usr/bin/ls", "rescue/sh", "sbin/init"} {
		p, ok := resolveInside(root, cand)
		if !ok {
			continue
		}
		f, err := elf.Open(p)
		if err != nil {
			continue
		}
		a := elfArch(f)
		abi := f.OSABI
		f.Close()
		if a == "" {
			continue
		}
		osName = "linux"
		if abi == elf.ELFOSABI_FREEBSD {
			osName = "freebsd"
		}
		return a, osName, nil
	}
	return "", "", fmt.Errorf("found no ELF binary (bin/sh, bin/busybox, usr/bin/env...) to tell the tree's architecture: %w", errdefs.ErrInvalid)
}

// resolveInside follows symlinks of rel within root (absolute targets are
// taken relative to root), at most 16 hops.
func resolveInside(root, rel string) (string, bool) {
	cur := "/" + rel
	for range 16 {
		p := filepath.Join(root, filepath.Clean(cur))
		fi, err := os.Lstat(p)
		if err != nil {
			return "", false
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			return p, fi.Mode().IsRegular()
		}
		t, err := os.Readlink(p)
		if err != nil {
			return "", false
		}
		if filepath.IsAbs(t) {
			cur = t
		} else {
			cur = filepath.Join(filepath.Dir(filepath.Clean(cur)), t)
		}
	}
	return "", false
}

func elfArch(f *elf.File) string {
	le := f.ByteOrder.String() == "LittleEndian"
	switch f.Machine {
	case elf.EM_X86_64:
		return "amd64"
	case elf.EM_AARCH64:
		return "arm64"
	case elf.EM_386:
		return "i386"
	case elf.EM_ARM:
		// debug/elf does not expose e_flags (hard-float ABI); armel trees
		// are rare enough that -a armel is the way to say so.
		return "armhf"
	case elf.EM_PPC64:
		if le {
			return "ppc64el"
		}
		return "ppc64"
	case elf.EM_S390:
		return "s390x"
	case elf.EM_RISCV:
		return "riscv64"
	case elf.EM_MIPS:
		if le && f.Class == elf.ELFCLASS64 {
			return "mips64el"
		}
	case elf.EM_LOONGARCH:
		return "loong64"
	}
	return ""
}

// buildEnv is one build's working state: the tree, where progress goes, and
// the log file that keeps every tool's full output.
type buildEnv struct {
	root     string
	progress io.Writer
	meter    Meter // nil: no byte progress
	log      *os.File
	logPath  string
}

func (m *Manager) newBuildEnv(name string, progress io.Writer) (*buildEnv, error) {
	if err := os.MkdirAll(m.opts.LogDir, 0o755); err != nil {
		return nil, fmt.Errorf("log dir: %w", err)
	}
	p := filepath.Join(m.opts.LogDir, fmt.Sprintf("image-%s-%s.log", name, time.Now().UTC().Format(versionLayout)))
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("log file: %w", err)
	}
	return &buildEnv{progress: progress, log: f, logPath: p}, nil
}

// fail wraps err as the failure of step, pointing at the log.
func (e *buildEnv) fail(step string, err error) error {
	var se *StepError
	if errors.As(err, &se) {
		return err
	}
	fmt.Fprintf(e.log, "## %s failed: %v\n", step, err)
	return &StepError{Step: step, Log: e.logPath, Err: err}
}

// finish closes the log, and removes it after a successful build.
func (e *buildEnv) finish(err error) {
	e.log.Close()
	if err == nil {
		os.Remove(e.logPath)
	}
}

// run runs a tool for step with its output in the log and, if tee is set,
// there too (a progress parser).
func (e *buildEnv) run(ctx context.Context, step string, tee io.Writer, name string, args ...string) error {
	fmt.Fprintf(e.log, "## %s: %s %s\n", step, name, strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.WaitDelay = 10 * time.Second
	var out io.Writer = e.log
	if tee != nil {
		out = io.MultiWriter(e.log, tee)
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		return e.fail(step, err)
	}
	return nil
}

// lineWriter calls fn for each complete line written to it.
type lineWriter struct {
	buf []byte
	fn  func(string)
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		w.fn(strings.TrimRight(string(w.buf[:i]), "\r"))
		w.buf = w.buf[i+1:]
	}
}
