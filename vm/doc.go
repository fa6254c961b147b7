// Package vm is kiln's VM tier: a sandbox.Launcher that runs each run in
// its own qemu-system guest with its own kernel, for jobs that set
// isolation = "vm".
//
// The guest boots Debian's kernel (or [vm] kernel) with a small initramfs
// kiln builds once per kernel and caches: busybox-static, the 9p and virtio
// modules of that kernel, and a fixed /init script. The run's clone is the
// guest's root over virtio-9p; every sandbox.Mount (/in read-only, /out,
// /host/<tool>) is one more 9p share, so nothing is copied into or out of
// an image. The job's exit code comes back on a virtio-serial port whose
// host end is a socket kiln reads (bounded), never in a file the guest could
// shape; the serial console is the run's console. qemu runs unprivileged,
// in a user namespace of its own mapped onto a host id range no other
// guest has, and gets what it needs as open files: the shares as
// detached nosuid,nodev mounts, writable ones idmapped. See docs/vm.md.
//
// Its files go by concern: vm_linux.go (the launcher, its options, the
// initramfs, the accelerator probe), start_linux.go (Start, as phases over
// one undo stack, internal/cleanup), qemuargs_linux.go (qemu's command line),
// shares_linux.go (the 9p shares), files_linux.go, userns_linux.go,
// net_linux.go, kernel_linux.go (what qemu is given), guest_linux.go (a
// started guest: wait, signal, kill), exitport_linux.go, qmp_linux.go,
// reap_linux.go; guest.go and initramfs.go are the guest's side.
//
// Linux only; elsewhere New fails with errdefs.ErrUnsupported.
package vm

import "github.com/kiln-build/kiln/linux/netcni"

// Options configure the VM tier of a host ([vm] in worker.toml). Empty
// fields take the defaults documented on each.
type Options struct {
	// Dir holds one directory per live guest (pidfile, QMP socket, the
	// run's 9p control share) and the cached initramfs. Required.
	Dir string
	// Qemu is the qemu-system binary; default qemu-system-x86_64 on PATH.
	Qemu string
	// Kernel is the guest kernel; default the newest /boot/vmlinuz-*.
	Kernel string
	// Modules is the kernel's module tree; default /lib/modules/<version>
	// with the version read from the kernel's file name.
	Modules string
	// Busybox is a static busybox for the initramfs; default /bin/busybox.
	Busybox string
	// Machine is "microvm", "q35" or "auto" (default: microvm under KVM,
	// q35 under TCG).
	Machine string
	// Accel is "kvm", "tcg" or "auto" (default: KVM when /dev/kvm opens
	// and a probe guest boots with it, else TCG).
	Accel string
	// MemoryBytes is the guest's memory when the job sets none; default
	// 512 MiB.
	MemoryBytes int64
	// Network gives guests with network = "bridge" their run's network
	// (the container tier's, so one pool and one set of rules serve
	// both); nil: such runs are refused with NetworkUnavailable.
	Network netcni.Network
	// NetworkUnavailable is why Network is nil, for that refusal.
	NetworkUnavailable error
}
