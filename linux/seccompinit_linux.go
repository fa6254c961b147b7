package linux

import (
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/containerd/containerd/containers"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/internal/durable"
	"github.com/kiln-build/kiln/internal/seccompbpf"
	"github.com/kiln-build/kiln/sandbox"
)

// SandboxInitName is the file name of the sandbox init binary
// (cmd/kiln-sandbox-init), looked for beside the kiln binary.
const SandboxInitName = "kiln-sandbox-init"

// sandboxInitMount is where a sandbox sees its launcher's init directory:
// the init binary ("init") and the compiled filters ("<key>.bpf").
const sandboxInitMount = "/.kiln-init"

// sandboxInitDir holds the init directories, one per content of the init
// binary.
const sandboxInitDir = runDir + "/init"

// probeTimeout bounds one probe container's life.
const probeTimeout = 30 * time.Second

// seccompFilters compiles each seccomp profile once, not once per
// container: runc builds a profile with libseccomp in every container's
// init, a few ms of CPU for containerd's allow-list (docs/benchmarks.md).
//
// The filter is the one runc itself builds: a throw-away runc container
// with the profile (a probe) runs kiln-sandbox-init --probe, and the
// filter is read from the kernel (PTRACE_SECCOMP_GET_FILTER) while the
// probe waits, from a process that never ran anything but kiln's init.
// Sandboxes of that profile then get no seccomp section in their spec;
// kiln-sandbox-init, their first process, installs the filter and execs
// the job. A profile whose probe fails is left to runc, so a sandbox is
// never less confined than runc would make it.
//
// Safe for concurrent use; a profile is probed once however many
// sandboxes ask for it at a time.
type seccompFilters struct {
	dir  string // host side of sandboxInitMount
	bin  []byte // the init binary, put back if dir loses it
	runc string
	// runcID names the runc binary (path, size, mtime) in a filter's key,
	// so a filter compiled before a runc upgrade is not reused after it.
	runcID string
	log    *slog.Logger

	mu    sync.Mutex
	byKey map[string]*compiledFilter
	// probes counts the probe containers started (for tests).
	probes atomic.Int32
}

type compiledFilter struct {
	done chan struct{} // closed when name or err is set
	name string        // file name in dir
	err  error
}

// newSeccompFilters copies the init binary at initPath into its directory
// under sandboxInitDir. It returns nil, and why, where sandboxes must go
// without: no init binary, one that is not static, or no runc to probe
// with.
func newSeccompFilters(initPath string, log *slog.Logger) (*seccompFilters, error) {
	if initPath == "" {
		return nil, errors.New(SandboxInitName + " not found")
	}
	runc, err := exec.LookPath("runc")
	if err != nil {
		return nil, fmt.Errorf("no runc to probe seccomp profiles with: %w", err)
	}
	resolved, err := filepath.EvalSymlinks(runc)
	if err != nil {
		return nil, fmt.Errorf("runc: %w", err)
	}
	st, err := os.Stat(resolved)
	if err != nil {
		return nil, fmt.Errorf("runc: %w", err)
	}
	bin, err := os.ReadFile(initPath)
	if err != nil {
		return nil, fmt.Errorf("sandbox init: %w", err)
	}
	if err := checkStatic(initPath, bin); err != nil {
		return nil, err
	}
	// Named by content: every launcher on the host with this binary
	// shares the directory and its filters (a filter is keyed by runc and
	// the profile alone), so the workers and tests of a host add one
	// directory per version of the binary, not one per data dir.
	sum := sha256.Sum256(bin)
	dir := filepath.Join(sandboxInitDir, hex.EncodeToString(sum[:8]))
	if err := installInit(dir, bin); err != nil {
		return nil, err
	}
	f := &seccompFilters{dir: dir, bin: bin, runc: runc, runcID: fmt.Sprintf("%s %d %d", resolved, st.Size(), st.ModTime().UnixNano()),
		log: log, byKey: map[string]*compiledFilter{}}
	f.removeDeadProbes()
	return f, nil
}

// probePrefix names a probe's directory (and container):
// probePrefix<pid of the process probing>-<random>.
const probePrefix = "seccomp-probe-"

// removeDeadProbes removes the probes of processes that died probing.
// A probe exits by itself when its prober dies (its input closes); its
// runc state and cgroup stay until deleted.
func (f *seccompFilters) removeDeadProbes() {
	dirs, _ := filepath.Glob(filepath.Join(runDir, probePrefix+"*"))
	for _, dir := range dirs {
		pidStr, _, _ := strings.Cut(strings.TrimPrefix(filepath.Base(dir), probePrefix), "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid <= 0 || unix.Kill(pid, 0) != unix.ESRCH {
			continue
		}
		out, err := f.deleteProbe(dir)
		if err != nil && !bytes.Contains(out, []byte("not exist")) {
			f.log.Warn("delete a dead seccomp probe", "dir", dir, "err", err, "output", string(bytes.TrimSpace(out)))
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			f.log.Warn("remove a dead seccomp probe", "dir", dir, "err", err)
		}
	}
}

// deleteProbe deletes, killing it first, the probe container whose
// directory is dir (its runc state in dir/state, its id dir's name).
func (f *seccompFilters) deleteProbe(dir string) ([]byte, error) {
	return exec.Command(f.runc, "--root", filepath.Join(dir, "state"), "delete", "--force", filepath.Base(dir)).CombinedOutput()
}

// installInit puts the init binary bin into dir, unless it is there.
func installInit(dir string, bin []byte) error {
	if err := os.MkdirAll(sandboxInitDir, 0o711); err != nil {
		return fmt.Errorf("sandbox init: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("sandbox init: %w", err)
	}
	if cur, err := os.ReadFile(filepath.Join(dir, "init")); err == nil && bytes.Equal(cur, bin) {
		return nil
	}
	// By rename: never a half-written binary for a sandbox starting.
	if err := durable.Replace(filepath.Join(dir, "init"), bin, 0o755); err != nil {
		return fmt.Errorf("sandbox init: %w", err)
	}
	return nil
}

// checkStatic refuses a binary (bin, read from path) that could not run in
// every sandbox: the images' own libraries are not the host's.
func checkStatic(path string, bin []byte) error {
	f, err := elf.NewFile(bytes.NewReader(bin))
	if err != nil {
		return fmt.Errorf("sandbox init %s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("sandbox init %s is dynamically linked (build it with CGO_ENABLED=0)", path)
		}
	}
	return nil
}

// opt moves the spec's seccomp profile into kiln-sandbox-init: the spec
// loses its seccomp section, and its process becomes the init with the
// compiled filter (and p's flags) in front of the process's own args. A
// spec runc must load itself (flags, a listener, or a profile whose probe
// failed) is left as it is, and p not applied.
func (f *seccompFilters) opt(p personality) oci.SpecOpts {
	return func(ctx context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		sc := s.Linux.Seccomp
		if sc == nil || len(sc.Flags) > 0 || sc.ListenerPath != "" || s.Process == nil || !s.Process.NoNewPrivileges {
			p.notApplied("runc installs this sandbox's seccomp profile")
			return nil
		}
		name, err := f.filter(ctx, sc)
		if err != nil {
			if ctx.Err() != nil {
				return err
			}
			// The probe logged why, once.
			p.notApplied("runc installs this sandbox's seccomp profile (" + err.Error() + ")")
			return nil
		}
		s.Linux.Seccomp = nil
		init := []string{sandboxInitMount + "/init"}
		if p.flags != 0 {
			init = append(init, "--personality", "0x"+strconv.FormatUint(uint64(p.flags), 16))
		}
		s.Process.Args = append(append(init, sandboxInitMount+"/"+name), s.Process.Args...)
		s.Mounts = append(s.Mounts, specs.Mount{Destination: sandboxInitMount, Type: "bind", Source: f.dir,
			Options: []string{"bind", "ro", "nosuid", "nodev"}})
		return nil
	}
}

// personality is what personality(2) flags a sandbox's first process
// gets (kiln-sandbox-init sets them: runc 1.1 applies the domain of the
// spec's linux.personality, not its flags), and who hears that they could
// not be.
type personality struct {
	flags uint32
	names []string // the variations the flags are, for the note
	note  sandbox.Noter
}

// Personality flags of <sys/personality.h>.
const (
	personalityAddrNoRandomize = 0x0040000
	personalityUname26         = 0x0020000
)

func personalityOf(spec sandbox.Spec) personality {
	var p personality
	if spec.NoASLR {
		p.flags |= personalityAddrNoRandomize
		p.names = append(p.names, "aslr")
	}
	if spec.Uname26 {
		p.flags |= personalityUname26
		p.names = append(p.names, "kernel")
	}
	p.note, _ = spec.Console.(sandbox.Noter)
	return p
}

// notApplied says on the run's console, when it has flags, that they
// were not set and why: the server recorded them, and cannot know.
func (p personality) notApplied(why string) {
	if p.flags != 0 && p.note != nil {
		p.note.Notef("variation %s: not applied: only %s sets personality flags, and %s (docs/reproducibility.md)", strings.Join(p.names, ", "), SandboxInitName, why)
	}
}

// filter returns the file name of sc's compiled filter, probing it the
// first time since boot (the files are kept in /run). ctx cancels the
// wait, not a probe that others may wait for.
func (f *seccompFilters) filter(ctx context.Context, sc *specs.LinuxSeccomp) (string, error) {
	js, err := json.Marshal(sc)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(append([]byte(f.runcID+"\n"), js...))
	key := hex.EncodeToString(sum[:])
	f.mu.Lock()
	e, ok := f.byKey[key]
	if ok && e.compiledAndGone(f.dir) {
		// Removed under the launcher (by hand: /run lasts as long as
		// the launcher): compiled again, and the init put back.
		ok = false
	}
	if !ok {
		e = &compiledFilter{done: make(chan struct{})}
		f.byKey[key] = e
		// Not cancelled with this waiter: others may wait for it too.
		go f.compile(context.WithoutCancel(ctx), e, key, sc)
	}
	f.mu.Unlock()
	select {
	case <-e.done:
		return e.name, e.err
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// failed returns the error of a profile left to runc, if any.
func (f *seccompFilters) failed() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, e := range f.byKey {
		select {
		case <-e.done:
			if e.err != nil {
				return e.err
			}
		default:
		}
	}
	return nil
}

// compiledAndGone reports whether e is compiled and its file is missing.
func (e *compiledFilter) compiledAndGone(dir string) bool {
	select {
	case <-e.done:
	default:
		return false
	}
	if e.err != nil {
		return false
	}
	_, err := os.Stat(filepath.Join(dir, e.name))
	return errors.Is(err, fs.ErrNotExist)
}

func (f *seccompFilters) compile(ctx context.Context, e *compiledFilter, key string, sc *specs.LinuxSeccomp) {
	defer close(e.done)
	e.name, e.err = f.filterFile(ctx, key, sc)
	if e.err != nil {
		f.log.Warn("seccomp profile left to runc, which builds it in every container", "profile", key[:12], "err", e.err)
	}
}

// filterFile returns the name in dir of the filter of profile sc (key):
// the file stored since boot by a launcher with this init binary and this
// runc (only root writes the directory), else a new probe's.
func (f *seccompFilters) filterFile(ctx context.Context, key string, sc *specs.LinuxSeccomp) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	if err := installInit(f.dir, f.bin); err != nil {
		return "", err
	}
	name := key + ".bpf"
	path := filepath.Join(f.dir, name)
	if prog, err := os.ReadFile(path); err == nil && seccompbpf.Check(prog) == nil {
		return name, nil
	}
	start := time.Now()
	prog, err := f.probe(ctx, sc)
	if err != nil {
		return "", err
	}
	if err := durable.Replace(path, prog, 0o644); err != nil {
		return "", err
	}
	f.log.Debug("seccomp profile compiled once", "profile", key[:12], "instructions", len(prog)/seccompbpf.InstructionSize, "took", time.Since(start))
	return name, nil
}

// probe runs kiln-sandbox-init --probe in a runc container with profile
// sc and returns the filter runc installed in it.
func (f *seccompFilters) probe(ctx context.Context, sc *specs.LinuxSeccomp) (_ []byte, retErr error) {
	f.probes.Add(1)
	tmp, err := os.MkdirTemp(runDir, probePrefix+strconv.Itoa(os.Getpid())+"-")
	if err != nil {
		return nil, fmt.Errorf("seccomp probe: %w", err)
	}
	defer func() {
		if err := os.RemoveAll(tmp); err != nil {
			retErr = errors.Join(retErr, fmt.Errorf("seccomp probe: %w", err))
		}
	}()
	rootfs := filepath.Join(tmp, "rootfs")
	if err := os.Mkdir(rootfs, 0o755); err != nil {
		return nil, fmt.Errorf("seccomp probe: %w", err)
	}
	if err := os.Link(filepath.Join(f.dir, "init"), filepath.Join(rootfs, "init")); err != nil {
		return nil, fmt.Errorf("seccomp probe: %w", err)
	}
	id := filepath.Base(tmp)
	s, err := oci.GenerateSpec(namespaces.WithNamespace(ctx, "kiln"), nil, &containers.Container{ID: id},
		oci.WithRootFSPath(rootfs), oci.WithRootFSReadonly(), oci.WithProcessArgs("/init", "--probe"),
		oci.WithNoNewPrivileges,
		func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
			s.Linux.Seccomp = sc
			return nil
		})
	if err != nil {
		return nil, fmt.Errorf("seccomp probe spec: %w", err)
	}
	js, err := json.Marshal(s)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(tmp, "config.json"), js, 0o600); err != nil {
		return nil, fmt.Errorf("seccomp probe: %w", err)
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer inW.Close() // the probe's end of its wait
	defer inR.Close()
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer outR.Close()
	defer outW.Close()
	state := filepath.Join(tmp, "state")
	pidFile := filepath.Join(tmp, "pid")
	// A file, not a pipe os/exec drains: the probe inherits it, and the
	// drain would wait for the probe's end.
	stderr, err := os.Create(filepath.Join(tmp, "stderr"))
	if err != nil {
		return nil, fmt.Errorf("seccomp probe: %w", err)
	}
	defer stderr.Close()
	cmd := exec.CommandContext(ctx, f.runc, "--root", state, "run", "--detach", "--bundle", tmp, "--pid-file", pidFile, id)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, stderr
	runErr := cmd.Run()
	defer func() {
		// A failed run may have left a created container behind.
		out, err := f.deleteProbe(tmp)
		if err != nil && runErr == nil {
			retErr = errors.Join(retErr, fmt.Errorf("seccomp probe: runc delete: %v: %s", err, bytes.TrimSpace(out)))
		}
	}()
	if runErr != nil {
		msg, _ := os.ReadFile(stderr.Name())
		return nil, fmt.Errorf("seccomp probe: runc run: %w: %s", runErr, bytes.TrimSpace(msg))
	}
	outW.Close()
	if err := readReady(ctx, outR); err != nil {
		return nil, fmt.Errorf("seccomp probe: %w", err)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return nil, fmt.Errorf("seccomp probe: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, fmt.Errorf("seccomp probe: pid file: %w", err)
	}
	return seccompFilterOf(pid)
}

// readReady waits for the probe's "ready" line: it has been exec'd, so
// runc's filter is in place.
func readReady(ctx context.Context, r *os.File) error {
	if dl, ok := ctx.Deadline(); ok {
		if err := r.SetReadDeadline(dl); err != nil {
			return err
		}
	}
	line := make([]byte, len("ready\n"))
	if _, err := io.ReadFull(r, line); err != nil {
		return fmt.Errorf("waiting for the probe: %w", err)
	}
	if string(line) != "ready\n" {
		return fmt.Errorf("the probe said %q", line)
	}
	return nil
}

// seccompFilterOf reads the seccomp filter process pid runs under, which
// must be its only one: a process can stack filters of its own, and a
// stacked one is no filter to give another sandbox.
func seccompFilterOf(pid int) ([]byte, error) {
	n, err := seccompFilterCount(pid)
	if err != nil {
		return nil, err
	}
	if n != 1 {
		return nil, fmt.Errorf("process %d runs under %d seccomp filters, want 1", pid, n)
	}
	type result struct {
		prog []byte
		err  error
	}
	ch := make(chan result, 1)
	// A tracer is a thread. Its goroutine never unlocks it, so the thread
	// ends with it, and with the thread any trace left by an error.
	go func() {
		runtime.LockOSThread()
		prog, err := traceFilter(pid)
		ch <- result{prog, err}
	}()
	r := <-ch
	return r.prog, r.err
}

func traceFilter(pid int) ([]byte, error) {
	if err := unix.PtraceSeize(pid); err != nil {
		return nil, fmt.Errorf("ptrace %d: %w", pid, err)
	}
	if err := unix.PtraceInterrupt(pid); err != nil {
		return nil, fmt.Errorf("ptrace %d: %w", pid, err)
	}
	var ws unix.WaitStatus
	if _, err := unix.Wait4(pid, &ws, unix.WALL, nil); err != nil {
		return nil, fmt.Errorf("ptrace %d: %w", pid, err)
	}
	if !ws.Stopped() {
		return nil, fmt.Errorf("ptrace %d: not stopped (%#x)", pid, ws)
	}
	defer func() { _ = unix.PtraceDetach(pid) }()
	n, _, errno := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_SECCOMP_GET_FILTER, uintptr(pid), 0, 0, 0, 0)
	if errno != 0 {
		return nil, fmt.Errorf("PTRACE_SECCOMP_GET_FILTER %d: %w", pid, errno)
	}
	if n == 0 || n > seccompbpf.MaxInstructions {
		return nil, fmt.Errorf("PTRACE_SECCOMP_GET_FILTER %d: %d instructions", pid, n)
	}
	prog := make([]unix.SockFilter, n)
	if _, _, errno := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_SECCOMP_GET_FILTER, uintptr(pid), 0, uintptr(unsafe.Pointer(&prog[0])), 0, 0); errno != 0 {
		return nil, fmt.Errorf("PTRACE_SECCOMP_GET_FILTER %d: %w", pid, errno)
	}
	return bytes.Clone(unsafe.Slice((*byte)(unsafe.Pointer(&prog[0])), len(prog)*int(unsafe.Sizeof(prog[0])))), nil
}

// seccompFilterCount is the Seccomp_filters line of pid's status.
func seccompFilterCount(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "Seccomp_filters:"); ok {
			return strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return 0, fmt.Errorf("process %d: no Seccomp_filters in its status (kernel without seccomp filters?)", pid)
}
