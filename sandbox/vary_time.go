package sandbox

import (
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"syscall"
)

// The time variation (docs/reproducibility.md): the member's clock runs
// Variations.Clock ahead for every dynamically linked process of the run,
// through the host's libfaketime, mounted read-only into the sandbox and
// preloaded. A Linux time namespace cannot do it: it offsets
// CLOCK_MONOTONIC and CLOCK_BOOTTIME, never CLOCK_REALTIME.

// faketimeDir is where the host's libfaketime directory is mounted in the
// sandbox: outside /work and every path an image ships, read-only.
const faketimeDir = "/.kiln-faketime"

// clockRe is a libfaketime offset of whole days ahead, as
// api.Assignment.Validate accepts it.
var clockRe = regexp.MustCompile(`^\+[1-9][0-9]{0,4}d$`)

// faketimeMultiarch is Debian's multiarch directory per Go arch, where
// package libfaketime installs faketime/libfaketime.so.1.
var faketimeMultiarch = map[string]string{
	"amd64":   "x86_64-linux-gnu",
	"arm64":   "aarch64-linux-gnu",
	"386":     "i386-linux-gnu",
	"arm":     "arm-linux-gnueabihf",
	"ppc64le": "powerpc64le-linux-gnu",
	"s390x":   "s390x-linux-gnu",
	"riscv64": "riscv64-linux-gnu",
}

// HostFaketime is where Debian's libfaketime package puts the library
// for this host's arch ("" when kiln knows no such place).
func HostFaketime() string {
	if ma := faketimeMultiarch[runtime.GOARCH]; ma != "" {
		return "/usr/lib/" + ma + "/faketime/libfaketime.so.1"
	}
	return ""
}

// clockPlan is what the time variation adds to a run's sandbox.
type clockPlan struct {
	mount Mount
	env   map[string]string
}

// planClock decides how the clone at root gets offset clock: the
// library lib (the host's libfaketime) mounted and preloaded through the
// env and the clone's /etc/ld.so.preload (which holds for a child whose
// environment was cleared, with the offset in the clone's
// /etc/faketimerc). It returns a note instead, and changes nothing, when
// the image cannot load lib: no glibc of lib's machine, or one older
// than lib needs (preloading it would then fail every process of the
// run, not merely leave its clock alone).
func planClock(root, lib, offset string) (plan *clockPlan, note string, err error) {
	if !clockRe.MatchString(offset) {
		return nil, "", fmt.Errorf("time %q: want +<days>d", offset)
	}
	if lib == "" {
		return nil, "variation time: not applied: kiln knows no libfaketime for this host's arch", nil
	}
	if err := faketimeFits(root, lib); err != nil {
		return nil, "variation time: not applied: " + err.Error(), nil
	}
	r, err := os.OpenRoot(root)
	if err != nil {
		return nil, "", err
	}
	defer r.Close()
	in := path.Join(faketimeDir, filepath.Base(lib))
	if err := prependLine(r, "etc/ld.so.preload", in+"\n"); err != nil {
		return nil, "", fmt.Errorf("time: %w", err)
	}
	if err := replaceFile(r, "etc/faketimerc", offset+"\n"); err != nil {
		return nil, "", fmt.Errorf("time: %w", err)
	}
	return &clockPlan{
		mount: Mount{Source: filepath.Dir(lib), Target: faketimeDir, ReadOnly: true},
		env: map[string]string{
			"LD_PRELOAD": in,
			"FAKETIME":   offset,
			// The wall clock is the variation; a monotonic clock a year
			// ahead only upsets timeouts, and some runtimes hang on it.
			"FAKETIME_DONT_FAKE_MONOTONIC": "1",
			// A child keeps its parent's offset rather than starting its
			// own count.
			"FAKETIME_DONT_RESET": "1",
		},
	}, "", nil
}

// withClock returns env with plan's variables set; the job's own
// LD_PRELOAD is kept, after libfaketime.
func withClock(env []string, plan *clockPlan) []string {
	out := make([]string, 0, len(env)+len(plan.env))
	preload := plan.env["LD_PRELOAD"]
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		if k == "LD_PRELOAD" && v != "" {
			preload += ":" + v
			continue
		}
		if _, ok := plan.env[k]; ok {
			continue
		}
		out = append(out, kv)
	}
	for _, k := range slices.Sorted(maps.Keys(plan.env)) {
		v := plan.env[k]
		if k == "LD_PRELOAD" {
			v = preload
		}
		out = append(out, k+"="+v)
	}
	return out
}

// libcPaths are where an image keeps its glibc, by multiarch directory.
func libcPaths() []string {
	var ps []string
	for _, ma := range slices.Sorted(maps.Keys(faketimeMultiarch)) {
		ps = append(ps, "lib/"+faketimeMultiarch[ma]+"/libc.so.6", "usr/lib/"+faketimeMultiarch[ma]+"/libc.so.6")
	}
	return append(ps, "lib64/libc.so.6", "usr/lib64/libc.so.6", "lib/libc.so.6", "usr/lib/libc.so.6")
}

// faketimeFits says why the image at root could not preload lib: it
// needs a glibc of lib's machine that defines every version of libc.so.6
// lib imports. The image's files are read through an os.Root, so a link
// in it never leads out of the clone.
func faketimeFits(root, lib string) error {
	lf, err := elf.Open(lib)
	if err != nil {
		return fmt.Errorf("the host's libfaketime: %w", err)
	}
	defer lf.Close()
	syms, err := lf.ImportedSymbols()
	if err != nil {
		return fmt.Errorf("the host's libfaketime: %w", err)
	}
	need := map[string]bool{}
	for _, s := range syms {
		if s.Library == "libc.so.6" && s.Version != "" {
			need[s.Version] = true
		}
	}
	r, err := os.OpenRoot(root)
	if err != nil {
		return err
	}
	defer r.Close()
	for _, p := range libcPaths() {
		// O_NONBLOCK: an image's FIFO at the path must not block the run.
		f, err := r.OpenFile(p, os.O_RDONLY|syscall.O_NONBLOCK, 0)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		} else if err != nil {
			continue // a link out of the clone, a loop: not a libc to use
		}
		ok, why := libcFits(f, lf.Machine, need)
		f.Close()
		if ok {
			return nil
		}
		return fmt.Errorf("the image's /%s %s", p, why)
	}
	return errors.New("the image has no glibc (libfaketime preloads into glibc's dynamic linker; static and musl binaries keep the host's clock)")
}

// libcFits says whether f is a glibc of machine m defining each version
// in need, and if not, why.
func libcFits(f *os.File, m elf.Machine, need map[string]bool) (bool, string) {
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		return false, "is not a regular file"
	}
	ef, err := elf.NewFile(f)
	if err != nil {
		return false, "is not an ELF library"
	}
	defer ef.Close()
	if ef.Machine != m {
		return false, fmt.Sprintf("is for %s, the host's libfaketime for %s", ef.Machine, m)
	}
	vs, err := ef.DynamicVersions()
	if err != nil {
		return false, "defines no symbol versions"
	}
	have := map[string]bool{}
	for _, v := range vs {
		have[v.Name] = true
	}
	for _, n := range slices.Sorted(maps.Keys(need)) {
		if !have[n] {
			return false, "lacks " + n + ", which the host's libfaketime needs (an older glibc)"
		}
	}
	return true, ""
}

// replaceFile makes name of r a new regular file holding content, renamed
// over what was there (a link at name is replaced, never followed).
func replaceFile(r *os.Root, name, content string) error {
	if err := r.MkdirAll(path.Dir(name), 0o755); err != nil {
		return err
	}
	tmp := name + ".kiln-vary"
	f, err := r.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	_, err = f.WriteString(content)
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
