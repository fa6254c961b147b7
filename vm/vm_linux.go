package vm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kiln-build/kiln/internal/idmap"
	"github.com/kiln-build/kiln/linux/netcni"
	"github.com/kiln-build/kiln/qemu"
	"github.com/kiln-build/kiln/sandbox"
	"golang.org/x/sys/unix"
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
	if opts.Dir == "" {
		return nil, fmt.Errorf("vm: no directory: %w", sandbox.ErrInvalid)
	}
	if strings.Contains(opts.Dir, "=") {
		// A guest's directory is the first, unnamed value of its -name.
		return nil, fmt.Errorf("vm: directory %q has a '=': %w", opts.Dir, sandbox.ErrInvalid)
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
		return o, fmt.Errorf("vm: "+format+": %w", append(a, sandbox.ErrUnsupported)...)
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
		return o, fmt.Errorf("vm: machine %q: want microvm, q35 or auto: %w", o.Machine, sandbox.ErrInvalid)
	}
	switch o.Accel {
	case "":
		o.Accel = "auto"
	case "auto", "kvm", "tcg":
	default:
		return o, fmt.Errorf("vm: accel %q: want kvm, tcg or auto: %w", o.Accel, sandbox.ErrInvalid)
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
			return "", fmt.Errorf("vm: initramfs: module %s is compressed; busybox insmod needs plain .ko files: %w", m, sandbox.ErrUnsupported)
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
			l.log.Info("vm: guests use TCG (no KVM)", "why", why)
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
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	if err := unprivileged(cmd.SysProcAttr, base, true); err != nil {
		return false, err.Error()
	}
	out, err := cmd.CombinedOutput()
	if bytes.Contains(out, []byte("kiln-probe-ok")) {
		return true, ""
	}
	return false, fmt.Sprintf("probe guest under KVM did not reach init: %v: %s", err, lastLine(out))
}

// kernelCmdline keeps the console for the job (quiet, loglevel=1: only
// emergencies) and turns a panic into a reboot, which ends qemu
// (-no-reboot) instead of leaving a hung guest. The rest spares the boot
// work a throwaway guest does not need; each item is measured in
// docs/benchmarks.md: no crypto self-tests, no delay-loop calibration,
// no W+X page-table walk (rodata=off), no i8042 probing.
func kernelCmdline(machine, accel string) string {
	c := plainCmdline +
		" cryptomgr.notests mitigations=off nokaslr tsc=reliable no_timer_check lpj=4000000" +
		" i8042.noaux i8042.nokbd i8042.nopnp random.trust_cpu=on rodata=off"
	if machine == "microvm" {
		c += " pci=off"
		if accel == "tcg" {
			// microvm has no HPET or PM timer to calibrate the TSC
			// against; under TCG the guest's TSC is the host's.
			c += " tsc_early_khz=" + strconv.Itoa(hostTSCkHz())
		}
	}
	return c
}

// plainCmdline is what kiln cannot do without.
const plainCmdline = "console=ttyS0 quiet loglevel=1 panic=-1 rdinit=/init"

// hostTSCkHz is the host CPU's clock from /proc/cpuinfo, or 2 GHz.
func hostTSCkHz() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "cpu MHz" {
			if f, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil && f > 0 {
				return int(f * 1000)
			}
		}
	}
	return 2_000_000
}

// machineArgs are the qemu arguments that set up the machine itself.
func machineArgs(machine, accel string, cpus int, mem int64) []string {
	args := []string{"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"}
	switch machine {
	case "microvm":
		// ACPI stays on: Debian's kernel finds virtio-mmio devices only
		// through it (no CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES).
		args = append(args, "-M", "microvm,x-option-roms=off,rtc=on")
	default:
		args = append(args, "-M", "q35")
		if _, err := os.Stat(qboot); err == nil {
			args = append(args, "-bios", qboot)
		}
	}
	if accel == "kvm" {
		args = append(args, "-accel", "kvm", "-cpu", "host")
	} else {
		// qemu64 boots a third faster than max under TCG: fewer
		// features for the kernel to set up and emulate.
		args = append(args, "-accel", "tcg,thread=multi", "-cpu", "qemu64")
	}
	return append(args, "-smp", strconv.Itoa(cpus), "-m", strconv.FormatInt(mem>>20, 10)+"M")
}

// qboot is a minimal firmware that boots a -kernel in a few ms, where
// SeaBIOS takes hundreds.
const qboot = "/usr/share/qemu/qboot.rom"

func virtioDevice(machine, kind string) string {
	if machine == "microvm" {
		return kind + "-device"
	}
	return kind + "-pci"
}

// pidfileName is where kiln keeps a guest's pid, in its directory.
const pidfileName = "qemu.pid"

// bootSettings turn off, for the benchmark, what kiln does to boot fast.
type bootSettings struct {
	seabios      bool // q35 with its default firmware instead of qboot
	plainCmdline bool // no boot-time kernel parameters
	packedKernel bool // boot the compressed bzImage
}

// Start boots the guest of spec. On error nothing is left running.
func (l *Launcher) Start(ctx context.Context, spec sandbox.Spec) (_ sandbox.Sandbox, retErr error) {
	switch {
	case spec.User != "":
		return nil, fmt.Errorf("vm: jobs run as the guest's root; [run] user %q is not supported with isolation = \"vm\": %w", spec.User, sandbox.ErrUnsupported)
	case spec.Network.OrNone() == sandbox.NetworkHost:
		return nil, fmt.Errorf("vm: network \"host\": a guest cannot share the host's network namespace; use \"bridge\" with isolation = \"vm\": %w", sandbox.ErrUnsupported)
	case spec.Network.OrNone() == sandbox.NetworkBridge && l.net().Available() != nil:
		return nil, fmt.Errorf("vm: %w", l.net().Available())
	case spec.Network.OrNone() != sandbox.NetworkNone && spec.Network.OrNone() != sandbox.NetworkBridge:
		return nil, fmt.Errorf("vm: network %q: %w", spec.Network, sandbox.ErrInvalid)
	case spec.Arch != "" && spec.Arch != qemu.Native():
		return nil, fmt.Errorf("vm: arch %s: guests run only the host's arch (%s): %w", spec.Arch, qemu.Native(), sandbox.ErrUnsupported)
	}
	initrd, err := l.ensureInitrd()
	if err != nil {
		return nil, err
	}
	kernel, err := l.ensureKernel(ctx)
	if err != nil {
		return nil, err
	}
	if l.boot.packedKernel {
		kernel = l.opts.Kernel
	}
	accel, machine := l.Accel(ctx)
	cmdline := kernelCmdline(machine, accel)
	if l.boot.plainCmdline {
		cmdline = plainCmdline
	}
	dir := filepath.Join(l.opts.Dir, spec.RunID)
	if pid := guestPID(dir); pid > 0 {
		return nil, fmt.Errorf("vm: guest of %s (pid %d): %w", spec.RunID, pid, sandbox.ErrExists)
	}
	if err := removeGuestDir(dir); err != nil {
		return nil, err
	}
	if err := makeGuestDir(dir); err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			_ = removeGuestDir(dir)
		}
	}()
	var att *netcni.Attached
	if spec.Network.OrNone() == sandbox.NetworkBridge {
		a, err := l.net().Attach(ctx, spec.RunID)
		if err != nil {
			return nil, err
		}
		att = a
		defer func() {
			if retErr == nil {
				return
			}
			// Cleanup must run even when ctx is what failed.
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			if err := att.Close(cctx); err != nil {
				l.log.Error("vm: network cleanup after failed start", "run", spec.RunID, "err", err)
			}
		}()
	}

	cpus := 1
	if spec.CPUs > 0 {
		cpus = int(math.Ceil(spec.CPUs))
	}
	mem := l.opts.MemoryBytes
	if spec.MemoryBytes > 0 {
		mem = max(spec.MemoryBytes, 64<<20) // below this the kernel itself does not fit
	}
	// What qemu gets, it gets as open files (fd 3 on): it runs as an
	// unprivileged id that cannot reach into kiln's directories.
	var files qemuFiles
	defer files.close()
	exitR, exitW, err := socketPair()
	if err != nil {
		return nil, fmt.Errorf("vm: exit port: %w", err)
	}
	defer func() {
		if retErr != nil {
			exitR.Close()
		}
	}()
	exitFD := files.add(exitW)
	base, rangeLock, err := takeRange()
	if err != nil {
		return nil, err
	}
	files.add(rangeLock) // qemu holds the range as long as it lives
	userns, err := l.userns(base)
	if err != nil {
		return nil, err
	}
	defer userns.Close()
	qmpFD, err := files.listen(filepath.Join(dir, "qmp.sock"))
	if err != nil {
		return nil, err
	}
	// The -name's guest is the label Reap finds guests by.
	args := []string{"-name", qemuOpt(dir) + ",process=kiln-vm-" + spec.RunID,
		"-chardev", "socket,id=qmp,fd=" + strconv.Itoa(qmpFD) + ",server=on,wait=off",
		"-mon", "chardev=qmp,mode=control"}
	margs := machineArgs(machine, accel, cpus, mem)
	if l.boot.seabios {
		margs = slices.DeleteFunc(margs, func(a string) bool { return a == "-bios" || a == qboot })
	}
	args = append(args, margs...)
	bootArgs, err := files.boot(kernel, initrd)
	if err != nil {
		return nil, err
	}
	args = append(args, bootArgs...)
	args = append(args,
		"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
		"-append", cmdline,
		"-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con",
		// The exit status comes back on a virtio-serial port whose host
		// end is a socket kiln holds the other end of: the guest can
		// send it bytes but cannot make it a host file, link, FIFO or
		// device.
		"-chardev", "socket,id=exit,fd="+strconv.Itoa(exitFD),
		"-device", virtioDevice(machine, "virtio-serial")+",id=vser0",
		"-device", "virtserialport,bus=vser0.0,chardev=exit,name="+exitPortName)
	// Each share is a detached nosuid,nodev mount qemu gets as a file.
	// Writable ones are idmapped onto qemu's range, so that qemu, root in
	// its namespace, keeps passthrough's real owners and symlinks there;
	// read-only ones are plain (their files are readable by their mode,
	// as in a container).
	share := func(tag, src string, ro bool) error {
		var ns *os.File
		if !ro {
			ns = userns
		}
		var m *os.File
		var err error
		var st unix.Statfs_t
		if !ro && unix.Statfs(src, &st) == nil && st.Type == unix.OVERLAYFS_SUPER_MAGIC {
			// overlayfs is not idmapped itself: a second overlay of its
			// layers, idmapped, with their mounts in the guest's directory.
			m, err = idmap.Overlay(src, dir, "vm", base, ns)
		} else {
			m, err = idmap.Detached(src, ns, ro)
		}
		if err != nil {
			return fmt.Errorf("vm: share %s: %w", tag, err)
		}
		fs := "local,id=fs-" + tag + ",path=" + fdPath(files.add(m)) + ",security_model=passthrough,multidevs=remap"
		if ro {
			fs += ",readonly=on"
		}
		args = append(args, "-fsdev", fs, "-device", virtioDevice(machine, "virtio-9p")+",fsdev=fs-"+tag+",mount_tag="+tag)
		return nil
	}
	// The control share is read-only: the guest's root (the job, through
	// /proc/1/root/kiln) could otherwise plant objects in it.
	if err := share("kiln", filepath.Join(dir, "kiln"), true); err != nil {
		return nil, err
	}
	if err := share("root", spec.Root, false); err != nil {
		return nil, err
	}
	for i, m := range spec.Mounts {
		if err := share("m"+strconv.Itoa(i), m.Source, m.ReadOnly); err != nil {
			return nil, err
		}
	}

	logf, err := os.Create(filepath.Join(dir, "qemu.log"))
	if err != nil {
		return nil, fmt.Errorf("vm: %w", err)
	}
	defer logf.Close()
	var cmd *exec.Cmd
	// launch writes the guest's run script and starts qemu; with a NIC,
	// in the run's network namespace, holding the tap.
	launch := func(tap *os.File, nic *guestNIC) error {
		run, err := guestRun(spec, nic)
		if err != nil {
			return err
		}
		// qemu reads it as no owner of it: the directory is 0700 and
		// reached only through the share's file.
		if err := os.WriteFile(filepath.Join(dir, "kiln", "run"), []byte(run), 0o644); err != nil {
			return fmt.Errorf("vm: %w", err)
		}
		args, files := args, files
		if nic == nil {
			args = append(args, "-nic", "none")
		} else {
			args = append(args, "-netdev", "tap,id=net0,fd="+strconv.Itoa(files.add(tap)),
				"-device", virtioDevice(machine, "virtio-net")+",netdev=net0,mac="+nic.mac.String())
		}
		cmd = exec.Command(l.opts.Qemu, args...)
		cmd.ExtraFiles = files
		cmd.Stdout = spec.Console
		if cmd.Stdout == nil {
			cmd.Stdout = io.Discard
		}
		cmd.Stderr = logf
		// Its own process group: a ^C at `kiln exec` is kiln's to handle.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := unprivileged(cmd.SysProcAttr, base, accel == "kvm"); err != nil {
			return err
		}
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("vm: start %s: %w", l.opts.Qemu, err)
		}
		return nil
	}
	if att == nil {
		err = launch(nil, nil)
	} else {
		var resolv []byte
		if resolv, err = os.ReadFile(att.ResolvConf); err != nil {
			return nil, fmt.Errorf("vm: network: %w", err)
		}
		err = inNetNS(att.NetNS, func(tap *os.File, nic guestNIC) error {
			nic.resolv = resolv
			return launch(tap, &nic)
		})
	}
	if err != nil {
		return nil, err
	}
	files.close() // qemu holds its own copies
	g := &guest{id: "kiln-" + spec.RunID, run: spec.RunID, dir: dir, cmd: cmd, done: make(chan struct{}), exit: make(chan exitReport, 1)}
	g.net = att
	go func() {
		g.exit <- readExitPort(exitR)
		exitR.Close()
	}()
	go func() {
		g.waitErr = cmd.Wait()
		close(g.done)
	}()
	// For guestPID: qemu cannot write into the directory itself.
	if err := os.WriteFile(filepath.Join(dir, pidfileName), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o600); err != nil {
		_ = g.Delete(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("vm: %w", err)
	}
	l.log.Debug("vm: started", "run", spec.RunID, "pid", cmd.Process.Pid, "accel", accel, "machine", machine, "uid", base)
	return g, nil
}

// socketPair is a connected pair of Unix stream sockets, close-on-exec.
func socketPair() (*os.File, *os.File, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	return os.NewFile(uintptr(fds[0]), "exit-port"), os.NewFile(uintptr(fds[1]), "exit-port-qemu"), nil
}

// qemuOpt escapes a value for qemu's comma-separated options.
func qemuOpt(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// guest is one running qemu process.
type guest struct {
	id      string
	run     string
	dir     string
	net     *netcni.Attached // nil: the guest has no network of its own
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
	exit    chan exitReport // one report, when qemu has closed the exit port
	killed  bool
	mu      sync.Mutex
}

func (g *guest) ID() string { return g.id }

// Wait returns the job's exit code, which the guest's init sends on the
// exit port before it reboots.
func (g *guest) Wait(ctx context.Context) (sandbox.Exit, error) {
	select {
	case <-g.done:
	case <-ctx.Done():
		return sandbox.Exit{}, ctx.Err()
	}
	var rep exitReport
	// qemu is gone, and with it the socket's other end: the report is due.
	select {
	case rep = <-g.exit:
		g.exit <- rep // a second Wait gets it too
	case <-ctx.Done():
		return sandbox.Exit{}, ctx.Err()
	}
	code, err := rep.code()
	if err == nil {
		// The init reports the job's status as sh gives it: 128+n for
		// a job that signal n killed.
		return sandbox.ExitOfCode(code), nil
	}
	g.mu.Lock()
	killed := g.killed
	g.mu.Unlock()
	if killed {
		return sandbox.Exit{Code: 128 + int(syscall.SIGKILL), Signal: "SIGKILL"}, nil
	}
	log, _ := os.ReadFile(filepath.Join(g.dir, "qemu.log"))
	return sandbox.Exit{}, fmt.Errorf("vm: guest %s: %w (qemu: %v: %s)", g.id, err, g.waitErr, lastLine(log))
}

// Signal: SIGTERM presses the guest's ACPI power button over QMP, which
// the guest's init passes to the job as SIGTERM; SIGKILL kills qemu. A
// guest whose qemu has ended takes no signal, and that is no error: its
// job has ended too.
func (g *guest) Signal(ctx context.Context, sig sandbox.Signal) error {
	if sig == sandbox.SIGKILL {
		return g.Kill(ctx)
	}
	if g.qemuEnded() {
		return nil
	}
	err := qmp(ctx, filepath.Join(g.dir, "qmp.sock"), "system_powerdown")
	// qemu may end while we talk to it (its guest powered off): its
	// monitor is gone then, which is no failure to signal.
	if err != nil && g.qemuEnded() {
		return nil
	}
	return err
}

// qemuEnded reports whether qemu has exited, whether or not Wait's
// goroutine has reaped it yet: waitid without reaping (WNOWAIT) sees an
// exited child, and a reaped one is no child any more (ECHILD).
func (g *guest) qemuEnded() bool {
	select {
	case <-g.done:
		return true
	default:
	}
	var info unix.Siginfo
	err := unix.Waitid(unix.P_PID, g.cmd.Process.Pid, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
	return errors.Is(err, unix.ECHILD) || (err == nil && info.Signo == int32(unix.SIGCHLD))
}

// Kill kills qemu and waits until it is gone; with it goes every process
// of the guest, so /out is the host's alone afterwards.
func (g *guest) Kill(ctx context.Context) error {
	select {
	case <-g.done:
		return nil
	default:
	}
	g.mu.Lock()
	g.killed = true
	g.mu.Unlock()
	if err := g.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("vm: kill %s: %w", g.id, err)
	}
	select {
	case <-g.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("vm: %s did not exit after SIGKILL: %w", g.id, ctx.Err())
	}
}

// Delete kills the guest and removes its directory and network (the tap
// went with qemu). Idempotent.
func (g *guest) Delete(ctx context.Context) error {
	if err := g.Kill(ctx); err != nil {
		return err
	}
	if err := removeGuestDir(g.dir); err != nil {
		return err
	}
	return g.net.Close(ctx)
}

// Reap kills every kiln guest under Dir whose run keep does not hold and
// removes its directory, then tears down the networks of the runs keep
// does not hold (the container tier's Reap does the same on the shared
// network; either may come first, both are idempotent). Guests are found
// by their -pidfile argument in /proc, so a guest whose directory is gone
// is found as well.
func (l *Launcher) Reap(ctx context.Context, keep func(runID string) bool) error {
	var errs []error
	for pid, run := range l.guests() {
		if keep(run) {
			continue
		}
		l.log.Info("vm: reaping orphaned guest", "run", run, "pid", pid)
		if err := killPID(ctx, pid); err != nil {
			errs = append(errs, err)
		}
	}
	entries, err := os.ReadDir(l.opts.Dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, err)
	}
	for _, e := range entries {
		if !e.IsDir() || keep(e.Name()) {
			continue
		}
		if err := removeGuestDir(filepath.Join(l.opts.Dir, e.Name())); err != nil {
			errs = append(errs, err)
		}
	}
	runs, err := l.net().List(ctx)
	if err != nil {
		errs = append(errs, err)
	}
	for _, run := range runs {
		if keep(run) {
			continue
		}
		l.log.Info("vm: reaping network", "run", run)
		if err := l.net().Teardown(ctx, run); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// guests maps the pid of every live kiln guest under Dir to its run.
func (l *Launcher) guests() map[int]string {
	out := map[int]string{}
	procs, _ := os.ReadDir("/proc")
	prefix := filepath.Clean(l.opts.Dir) + "/"
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		if run := runOf(pid, prefix); run != "" {
			out[pid] = run
		}
	}
	return out
}

// runOf returns the run of the guest pid if it is a qemu whose -name is
// a directory under prefix (its guest's), else "". A guest started by an
// older kiln is found by its -pidfile under prefix.
func runOf(pid int, prefix string) string {
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return ""
	}
	args := strings.Split(string(cmdline), "\x00")
	for i := 0; i+1 < len(args); i++ {
		var rel string
		switch args[i] {
		case "-name":
			dir := firstOpt(args[i+1])
			if !strings.HasPrefix(dir, prefix) {
				continue
			}
			rel = strings.TrimPrefix(dir, prefix)
		case "-pidfile":
			if !strings.HasPrefix(args[i+1], prefix) || filepath.Base(args[i+1]) != pidfileName {
				continue
			}
			rel = filepath.Dir(strings.TrimPrefix(args[i+1], prefix))
		default:
			continue
		}
		if rel != "" && rel != "." && !strings.Contains(rel, "/") {
			return rel
		}
	}
	return ""
}

// firstOpt is the first value of a qemu option string, unescaped (qemuOpt).
func firstOpt(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == ',' {
			if i+1 < len(s) && s[i+1] == ',' {
				i++
			} else {
				break
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// guestPID is the pid of the live guest whose directory is dir, or 0.
func guestPID(dir string) int {
	data, err := os.ReadFile(filepath.Join(dir, pidfileName))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return 0
	}
	if runOf(pid, filepath.Dir(dir)+"/") != filepath.Base(dir) {
		return 0
	}
	return pid
}

// killPID SIGKILLs a guest that is not our child and waits for it to go.
func killPID(ctx context.Context, pid int) error {
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("vm: kill guest %d: %w", pid, err)
	}
	for {
		// A zombie whose parent is gone is reaped by init soon; its
		// cmdline reads empty once it is a zombie.
		if b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline"); err != nil || len(b) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("vm: guest %d still there after SIGKILL: %w", pid, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}
