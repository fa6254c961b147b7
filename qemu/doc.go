// Package qemu is kiln's foreign-architecture support: one canonical name
// per CPU architecture (Debian's), and the checks that this host's kernel
// hands foreign binaries to qemu-user in a way a sandbox can use.
//
// kiln never copies an emulator into an image or a clone. It relies on the
// kernel having opened the emulator when the handler was registered: the F
// (fix-binary) flag of Linux binfmt_misc, PRE_OPEN of FreeBSD's binmiscctl
// image activators. Handlers without it do not count as runnable.
//
// The FreeBSD code path (binmiscctl_freebsd.go) cannot run on the Linux CI
// machines: its parser and argv generation are unit-tested on Linux against
// sample output written from binmiscctl(8)'s format, and the rest is only
// cross-compiled and vetted.
package qemu
