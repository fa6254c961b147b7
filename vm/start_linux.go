package vm

import (
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"

	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/internal/cleanup"
	"github.com/kiln-build/kiln/linux/netcni"
	"github.com/kiln-build/kiln/qemu"
	"github.com/kiln-build/kiln/sandbox"
)

// bootSettings turn off, for the benchmark, what kiln does to boot fast.
type bootSettings struct {
	seabios      bool // q35 with its default firmware instead of qboot
	plainCmdline bool // no boot-time kernel parameters
	packedKernel bool // boot the compressed bzImage
}

// starting is one Start under way: what its phases hand on to the next,
// and the undo of what they have made.
type starting struct {
	l              *Launcher
	spec           sandbox.Spec
	initrd, kernel string
	accel, machine string
	cmdline        string
	dir            string           // the guest's directory
	att            *netcni.Attached // the run's bridge network; nil: none
	// files are what qemu gets, as open files (fd 3 on): it runs as an
	// unprivileged id that cannot reach into kiln's directories.
	files  qemuFiles
	exitR  *os.File // kiln's end of the exit port
	exitFD int      // qemu's end of it
	base   uint32   // qemu's id range
	userns *os.File // the range's namespace, writable shares are idmapped through
	args   []string // qemu's arguments but the NIC's
	logf   *os.File // qemu's stderr
	cmd    *exec.Cmd
	undo   cleanup.Stack
}

// Start boots the guest of spec. On error nothing is left running.
func (l *Launcher) Start(ctx context.Context, spec sandbox.Spec) (_ sandbox.Sandbox, retErr error) {
	if err := l.check(spec); err != nil {
		return nil, err
	}
	st := &starting{l: l, spec: spec}
	defer func() {
		st.close()
		if retErr != nil {
			st.undo.Run(ctx)
		}
	}()
	phases := []func(context.Context) error{st.boot, st.guestDir, st.network, st.exitPort, st.identity, st.commandLine, st.shares, st.launch}
	for _, phase := range phases {
		if err := phase(ctx); err != nil {
			return nil, err
		}
	}
	g, err := st.follow(ctx)
	if err != nil {
		return nil, err
	}
	st.undo.Disarm()
	return g, nil
}

// check refuses what a guest cannot run.
func (l *Launcher) check(spec sandbox.Spec) error {
	switch {
	case spec.User != "":
		return fmt.Errorf("vm: jobs run as the guest's root; [run] user %q is not supported with isolation = \"vm\": %w", spec.User, errdefs.ErrUnsupported)
	case spec.Network.OrNone() == sandbox.NetworkHost:
		return fmt.Errorf("vm: network \"host\": a guest cannot share the host's network namespace; use \"bridge\" with isolation = \"vm\": %w", errdefs.ErrUnsupported)
	case spec.Network.OrNone() == sandbox.NetworkBridge && l.net().Available() != nil:
		return fmt.Errorf("vm: %w", l.net().Available())
	case spec.Network.OrNone() != sandbox.NetworkNone && spec.Network.OrNone() != sandbox.NetworkBridge:
		return fmt.Errorf("vm: network %q: %w", spec.Network, errdefs.ErrInvalid)
	case spec.Arch != "" && spec.Arch != qemu.Native():
		return fmt.Errorf("vm: arch %s: guests run only the host's arch (%s): %w", spec.Arch, qemu.Native(), errdefs.ErrUnsupported)
	}
	return nil
}

// close closes what Start holds only while it runs: kiln's copies of
// qemu's files (qemu, once started, has its own), the namespace's file
// and qemu's log.
func (st *starting) close() {
	st.files.close()
	if st.userns != nil {
		st.userns.Close()
	}
	if st.logf != nil {
		st.logf.Close()
	}
}

// boot finds what the guest boots: the initramfs and kernel, the
// accelerator and machine, the kernel's command line.
func (st *starting) boot(ctx context.Context) error {
	l := st.l
	var err error
	if st.initrd, err = l.ensureInitrd(); err != nil {
		return err
	}
	if st.kernel, err = l.ensureKernel(ctx); err != nil {
		return err
	}
	if l.boot.packedKernel {
		st.kernel = l.opts.Kernel
	}
	st.accel, st.machine = l.Accel(ctx)
	st.cmdline = kernelCmdline(st.machine, st.accel)
	if l.boot.plainCmdline {
		st.cmdline = plainCmdline
	}
	return nil
}

// guestDir makes the guest's directory afresh; a live guest of the run
// keeps its own.
func (st *starting) guestDir(context.Context) error {
	dir := filepath.Join(st.l.opts.Dir, st.spec.RunID)
	if pid := guestPID(dir); pid > 0 {
		return fmt.Errorf("vm: guest of %s (pid %d): %w", st.spec.RunID, pid, errdefs.ErrExists)
	}
	if err := removeGuestDir(dir); err != nil {
		return err
	}
	if err := makeGuestDir(dir); err != nil {
		return err
	}
	st.dir = dir
	st.undo.Push(func(context.Context) { _ = removeGuestDir(dir) })
	return nil
}

// network sets up the run's bridge network, if it has one.
func (st *starting) network(ctx context.Context) error {
	if st.spec.Network.OrNone() != sandbox.NetworkBridge {
		return nil
	}
	a, err := st.l.net().Attach(ctx, st.spec.RunID)
	if err != nil {
		return err
	}
	st.att = a
	st.undo.Push(func(ctx context.Context) {
		if err := a.Close(ctx); err != nil {
			st.l.log.Error("network cleanup after failed start", "run", st.spec.RunID, "err", err)
		}
	})
	return nil
}

// exitPort makes the socket pair the job's exit status comes back on:
// qemu gets one end, kiln reads the other.
func (st *starting) exitPort(context.Context) error {
	r, w, err := socketPair()
	if err != nil {
		return fmt.Errorf("vm: exit port: %w", err)
	}
	st.exitR = r
	st.undo.Push(func(context.Context) { r.Close() })
	st.exitFD = st.files.add(w)
	return nil
}

// identity takes an id range for qemu and its user namespace.
func (st *starting) identity(context.Context) error {
	base, rangeLock, err := takeRange()
	if err != nil {
		return err
	}
	st.files.add(rangeLock) // qemu holds the range as long as it lives
	st.base = base
	st.userns, err = st.l.userns(base)
	return err
}

// commandLine sets qemu's arguments but the shares and the NIC: its
// name, QMP, the machine, the kernel, the console and the exit port.
func (st *starting) commandLine(context.Context) error {
	l, spec := st.l, st.spec
	cpus := 1
	if spec.CPUs > 0 {
		cpus = int(math.Ceil(spec.CPUs))
	}
	mem := l.opts.MemoryBytes
	if spec.MemoryBytes > 0 {
		mem = max(spec.MemoryBytes, 64<<20) // below this the kernel itself does not fit
	}
	qmpFD, err := st.files.listen(filepath.Join(st.dir, "qmp.sock"))
	if err != nil {
		return err
	}
	// The -name's guest is the label Reap finds guests by.
	args := []string{"-name", qemuOpt(st.dir) + ",process=kiln-vm-" + spec.RunID,
		"-chardev", "socket,id=qmp,fd=" + strconv.Itoa(qmpFD) + ",server=on,wait=off",
		"-mon", "chardev=qmp,mode=control"}
	margs := machineArgs(st.machine, st.accel, cpus, mem)
	if l.boot.seabios {
		margs = slices.DeleteFunc(margs, func(a string) bool { return a == "-bios" || a == qboot })
	}
	args = append(args, margs...)
	bootArgs, err := st.files.boot(st.kernel, st.initrd)
	if err != nil {
		return err
	}
	args = append(args, bootArgs...)
	st.args = append(args,
		"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
		"-append", st.cmdline,
		"-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con",
		// The exit status comes back on a virtio-serial port whose host
		// end is a socket kiln holds the other end of: the guest can
		// send it bytes but cannot make it a host file, link, FIFO or
		// device.
		"-chardev", "socket,id=exit,fd="+strconv.Itoa(st.exitFD),
		"-device", virtioDevice(st.machine, "virtio-serial")+",id=vser0",
		"-device", "virtserialport,bus=vser0.0,chardev=exit,name="+exitPortName)
	return nil
}

// launch starts qemu; with a network, in the run's network namespace,
// holding the tap.
func (st *starting) launch(context.Context) error {
	logf, err := os.Create(filepath.Join(st.dir, "qemu.log"))
	if err != nil {
		return fmt.Errorf("vm: %w", err)
	}
	st.logf = logf
	if st.att == nil {
		return st.exec(nil, nil)
	}
	resolv, err := os.ReadFile(st.att.ResolvConf)
	if err != nil {
		return fmt.Errorf("vm: network: %w", err)
	}
	return inNetNS(st.att.NetNS, func(tap *os.File, nic guestNIC) error {
		nic.resolv = resolv
		return st.exec(tap, &nic)
	})
}

// exec writes the guest's run script and starts qemu, with a NIC on tap
// when nic is set.
func (st *starting) exec(tap *os.File, nic *guestNIC) error {
	run, err := guestRun(st.spec, nic)
	if err != nil {
		return err
	}
	// qemu reads it as no owner of it: the directory is 0700 and
	// reached only through the share's file.
	if err := os.WriteFile(filepath.Join(st.dir, "kiln", "run"), []byte(run), 0o644); err != nil {
		return fmt.Errorf("vm: %w", err)
	}
	args, files := st.args, st.files
	if nic == nil {
		args = append(args, "-nic", "none")
	} else {
		args = append(args, "-netdev", "tap,id=net0,fd="+strconv.Itoa(files.add(tap)),
			"-device", virtioDevice(st.machine, "virtio-net")+",netdev=net0,mac="+nic.mac.String())
	}
	cmd := exec.Command(st.l.opts.Qemu, args...)
	cmd.ExtraFiles = files
	cmd.Stdout = st.spec.Console
	if cmd.Stdout == nil {
		cmd.Stdout = io.Discard
	}
	cmd.Stderr = st.logf
	// Its own process group: a ^C at `kiln exec` is kiln's to handle.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := unprivileged(cmd.SysProcAttr, st.base, st.accel == "kvm"); err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("vm: start %s: %w", st.l.opts.Qemu, err)
	}
	st.cmd = cmd
	return nil
}

// follow returns the started guest, its exit port read and its qemu
// waited for.
func (st *starting) follow(ctx context.Context) (*guest, error) {
	st.files.close() // qemu holds its own copies
	cmd, exitR := st.cmd, st.exitR
	g := &guest{id: "kiln-" + st.spec.RunID, run: st.spec.RunID, dir: st.dir, cmd: cmd, done: make(chan struct{}), exit: make(chan exitReport, 1)}
	g.net = st.att
	go func() {
		g.exit <- readExitPort(exitR)
		exitR.Close()
	}()
	go func() {
		g.waitErr = cmd.Wait()
		close(g.done)
	}()
	// For guestPID: qemu cannot write into the directory itself.
	if err := os.WriteFile(filepath.Join(st.dir, pidfileName), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o600); err != nil {
		_ = g.Delete(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("vm: %w", err)
	}
	st.l.log.Debug("started", "run", st.spec.RunID, "pid", cmd.Process.Pid, "accel", st.accel, "machine", st.machine, "uid", st.base)
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
