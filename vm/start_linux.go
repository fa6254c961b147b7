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
	"time"

	"github.com/kiln-build/kiln/internal/idmap"
	"github.com/kiln-build/kiln/linux/netcni"
	"github.com/kiln-build/kiln/qemu"
	"github.com/kiln-build/kiln/sandbox"
	"golang.org/x/sys/unix"
)

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
