package vm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/sandbox"
)

// Launcher is the VM tier's sandbox.Launcher: one qemu-system process per
// run. Safe for concurrent use.
type Launcher struct {
	opts Options
	log  *slog.Logger

	mu      sync.Mutex
	initrd  string // built initramfs, "" until the first Start
	kernel  string // the kernel qemu boots, "" until the first Start
	accel   string // resolved accelerator, "" until the first Start
	boot    bootSettings
	machine string // resolved machine type, with accel
	// ns keeps, per id range, the user namespace idmapped mounts are made
	// through (see userns); it lives as long as the process.
	ns map[uint32]*os.File
}

var _ sandbox.Launcher = (*Launcher)(nil)

// New checks that qemu and a kernel are there and returns the launcher.
// The initramfs is built (or found in the cache) and the accelerator
// probed at the first Start.
func New(opts Options, log *slog.Logger) (*Launcher, error) {
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "vm")
	if opts.Dir == "" {
		return nil, fmt.Errorf("vm: no directory: %w", errdefs.ErrInvalid)
	}
	if strings.Contains(opts.Dir, "=") {
		// A guest's directory is the first, unnamed value of its -name.
		return nil, fmt.Errorf("vm: directory %q has a '=': %w", opts.Dir, errdefs.ErrInvalid)
	}
	var err error
	if opts, err = resolve(opts); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("vm: %w", err)
	}
	return &Launcher{opts: opts, log: log}, nil
}

// resolve fills in the defaults and checks each exists.
func resolve(o Options) (Options, error) {
	unsupported := func(format string, a ...any) (Options, error) {
		return o, fmt.Errorf("vm: "+format+": %w", append(a, errdefs.ErrUnsupported)...)
	}
	if o.Qemu == "" {
		o.Qemu = "qemu-system-x86_64"
	}
	q, err := exec.LookPath(o.Qemu)
	if err != nil {
		return unsupported("%s not found (apt-get install qemu-system-x86, or set [vm] qemu)", o.Qemu)
	}
	o.Qemu = q
	if o.Kernel == "" {
		ks, _ := filepath.Glob("/boot/vmlinuz-*")
		if len(ks) == 0 {
			return unsupported("no guest kernel: no /boot/vmlinuz-* (apt-get install linux-image-amd64, or set [vm] kernel)")
		}
		sort.Slice(ks, func(i, j int) bool { return versionLess(ks[i], ks[j]) })
		o.Kernel = ks[len(ks)-1]
	}
	if _, err := os.Stat(o.Kernel); err != nil {
		return unsupported("guest kernel: %v", err)
	}
	if o.Modules == "" {
		ver := strings.TrimPrefix(filepath.Base(o.Kernel), "vmlinuz-")
		o.Modules = filepath.Join("/lib/modules", ver)
	}
	if _, err := os.Stat(filepath.Join(o.Modules, "modules.dep")); err != nil {
		return unsupported("modules of the guest kernel: %v (set [vm] modules)", err)
	}
	if o.Busybox == "" {
		o.Busybox = "/bin/busybox"
	}
	if _, err := os.Stat(o.Busybox); err != nil {
		return unsupported("busybox for the guest's init: %v (apt-get install busybox-static, or set [vm] busybox)", err)
	}
	switch o.Machine {
	case "":
		o.Machine = "auto"
	case "auto":
	case "microvm", "q35":
	default:
		return o, fmt.Errorf("vm: machine %q: want microvm, q35 or auto: %w", o.Machine, errdefs.ErrInvalid)
	}
	switch o.Accel {
	case "":
		o.Accel = "auto"
	case "auto", "kvm", "tcg":
	default:
		return o, fmt.Errorf("vm: accel %q: want kvm, tcg or auto: %w", o.Accel, errdefs.ErrInvalid)
	}
	if o.MemoryBytes == 0 {
		o.MemoryBytes = 512 << 20
	}
	return o, nil
}

// versionLess orders "vmlinuz-6.1.0-9-amd64" before "vmlinuz-6.1.0-10-amd64".
func versionLess(a, b string) bool {
	split := func(s string) []string {
		return strings.FieldsFunc(s, func(r rune) bool { return r == '.' || r == '-' })
	}
	x, y := split(a), split(b)
	for i := 0; i < len(x) && i < len(y); i++ {
		n, e1 := strconv.Atoi(x[i])
		m, e2 := strconv.Atoi(y[i])
		switch {
		case e1 == nil && e2 == nil && n != m:
			return n < m
		case (e1 != nil || e2 != nil) && x[i] != y[i]:
			return x[i] < y[i]
		}
	}
	return len(x) < len(y)
}

// Kernel is the guest kernel in use.
func (l *Launcher) Kernel() string { return l.opts.Kernel }

// ensureInitrd builds the initramfs for the kernel's modules once and
// keeps it in Dir under a name that changes with its content.
func (l *Launcher) ensureInitrd() (string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.initrd != "" {
		return l.initrd, nil
	}
	order, err := moduleOrder(l.opts.Modules, guestModules)
	if err != nil {
		return "", fmt.Errorf("vm: initramfs: %w", err)
	}
	files := []cpioFile{
		{name: "bin", mode: cpioDir | 0o755},
		{name: "dev", mode: cpioDir | 0o755},
		{name: "dev/console", mode: cpioChr | 0o600, rdev: [2]uint32{5, 1}},
		{name: "modules", mode: cpioDir | 0o755},
		{name: "bin/busybox", mode: cpioReg | 0o755, fromP: l.opts.Busybox},
		{name: "init", mode: cpioReg | 0o755, data: []byte(guestInit)},
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n", guestInit, strings.Join(order, "\n"))
	seenDir := map[string]bool{}
	var list []string
	for _, m := range order {
		if !strings.HasSuffix(m, ".ko") {
			return "", fmt.Errorf("vm: initramfs: module %s is compressed; busybox insmod needs plain .ko files: %w", m, errdefs.ErrUnsupported)
		}
		for d := filepath.Dir(m); d != "." && !seenDir[d]; d = filepath.Dir(d) {
			seenDir[d] = true
		}
		files = append(files, cpioFile{name: "modules/" + m, mode: cpioReg | 0o644, fromP: filepath.Join(l.opts.Modules, m)})
		list = append(list, m)
	}
	dirs := make([]string, 0, len(seenDir))
	for d := range seenDir {
		dirs = append(dirs, d)
	}
	sort.Strings(dirs) // parents first
	for _, d := range dirs {
		files = append(files, cpioFile{name: "modules/" + d, mode: cpioDir | 0o755})
	}
	files = append(files, cpioFile{name: "modules/order", mode: cpioReg | 0o644, data: []byte(strings.Join(list, "\n") + "\n")})
	for _, p := range []string{l.opts.Busybox, l.opts.Modules} {
		st, err := os.Stat(p)
		if err != nil {
			return "", fmt.Errorf("vm: initramfs: %w", err)
		}
		fmt.Fprintf(h, "%s %d %d\n", p, st.Size(), st.ModTime().UnixNano())
	}
	// Directories must come before their entries.
	sort.SliceStable(files, func(i, j int) bool { return files[i].name < files[j].name })
	path := filepath.Join(l.opts.Dir, "initramfs-"+hex.EncodeToString(h.Sum(nil))[:16]+".cpio.gz")
	if _, err := os.Stat(path); err == nil {
		if err := os.Chmod(path, 0o644); err != nil { // an older kiln made it 0600
			return "", fmt.Errorf("vm: initramfs: %w", err)
		}
		l.initrd = path
		return path, nil
	}
	tmp, err := os.CreateTemp(l.opts.Dir, ".initramfs-*")
	if err != nil {
		return "", fmt.Errorf("vm: initramfs: %w", err)
	}
	defer os.Remove(tmp.Name())
	err = writeCpio(tmp, files)
	if err == nil {
		err = tmp.Chmod(0o644) // qemu reads it as no owner of it
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return "", fmt.Errorf("vm: initramfs: %w", err)
	}
	removeOthers(l.opts.Dir, "initramfs-*.cpio.gz", path)
	l.initrd = path
	return path, nil
}

// removeOthers removes the files matching pattern in dir but keep: the
// cache of an older kiln or kernel (a guest that is running has its copy
// loaded already).
func removeOthers(dir, pattern, keep string) {
	old, _ := filepath.Glob(filepath.Join(dir, pattern))
	for _, p := range old {
		if p != keep {
			os.Remove(p)
		}
	}
}

// Accel returns the accelerator ("kvm" or "tcg") and the machine type
// guests use, probing KVM once when Options.Accel is auto. An auto
// machine is microvm under KVM and q35 under TCG, where q35 with qboot
// boots faster (docs/benchmarks.md).
func (l *Launcher) Accel(ctx context.Context) (accel, machine string) {
	l.mu.Lock()
	accel, machine = l.accel, l.machine
	l.mu.Unlock()
	if accel != "" {
		return accel, machine
	}
	machineFor := func(accel string) string {
		if l.opts.Machine != "auto" {
			return l.opts.Machine
		}
		if accel == "kvm" {
			return "microvm"
		}
		return "q35"
	}
	switch l.opts.Accel {
	case "kvm", "tcg":
		accel = l.opts.Accel
	default:
		// The probe boots a guest: its answer is kept for this boot of
		// the host, for every kiln process.
		bootID, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
		cache := filepath.Join(l.opts.Dir, "accel-"+strings.TrimSpace(string(bootID)))
		if b, err := os.ReadFile(cache); err == nil && (string(b) == "kvm" || string(b) == "tcg") {
			accel = string(b)
			break
		}
		accel = "tcg"
		if ok, why := l.probeKVM(ctx, machineFor("kvm")); ok {
			accel = "kvm"
		} else {
			l.log.Info("guests use TCG (no KVM)", "why", why)
		}
		if ctx.Err() == nil {
			_ = os.WriteFile(cache, []byte(accel), 0o644)
		}
	}
	machine = machineFor(accel)
	l.mu.Lock()
	l.accel, l.machine = accel, machine
	l.mu.Unlock()
	return accel, machine
}

// probeKVM says whether a guest boots to its init under KVM: /dev/kvm
// opening is not enough (a nested or broken KVM can spin in the kernel).
func (l *Launcher) probeKVM(ctx context.Context, machine string) (bool, string) {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false, err.Error()
	}
	f.Close()
	initrd, err := l.ensureInitrd()
	if err != nil {
		return false, err.Error()
	}
	kernel, err := l.ensureKernel(ctx)
	if err != nil {
		return false, err.Error()
	}
	pctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	// The probe runs as guests do: unprivileged, /dev/kvm through its group.
	base, rangeLock, err := takeRange()
	if err != nil {
		return false, err.Error()
	}
	defer rangeLock.Close()
	var files qemuFiles
	defer files.close()
	files.add(rangeLock)
	boot, err := files.boot(kernel, initrd)
	if err != nil {
		return false, err.Error()
	}
	args := machineArgs(machine, "kvm", 1, 128<<20)
	args = append(args, boot...)
	args = append(args, "-append", kernelCmdline(machine, "kvm")+" kiln.probe",
		"-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con")
	cmd := exec.CommandContext(pctx, l.opts.Qemu, args...)
	cmd.ExtraFiles = files
	// A probe outlives no worker: a worker killed mid-probe (SIGKILL, an
	// OOM) left it running for good where KVM hangs. Pdeathsig follows the
	// thread that started it, so that thread is held until the probe ends.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := unprivileged(cmd.SysProcAttr, base, true); err != nil {
		return false, err.Error()
	}
	runtime.LockOSThread()
	out, err := cmd.CombinedOutput()
	runtime.UnlockOSThread()
	if bytes.Contains(out, []byte("kiln-probe-ok")) {
		return true, ""
	}
	return false, fmt.Sprintf("probe guest under KVM did not reach init: %v: %s", err, lastLine(out))
}
