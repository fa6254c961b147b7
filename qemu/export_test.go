package qemu

// The uname, goarch and freebsd columns of the arch table are read only by
// tests today; these accessors keep them checked without exporting them.

// Uname is what `uname -m` prints in a Linux sandbox of arch (aarch64 for
// arm64); "" for an unknown arch.
func Uname(arch string) string { i, _ := info(arch); return i.uname }

// GoArch is Go's GOARCH for arch (arm for armhf, 386 for i386); "" for an
// unknown arch.
func GoArch(arch string) string { i, _ := info(arch); return i.goarch }

// FreeBSDArch is FreeBSD's MACHINE_ARCH for arch (aarch64 for arm64); "" if
// the arch is unknown or FreeBSD has no port for it.
func FreeBSDArch(arch string) string { i, _ := info(arch); return i.freebsd }
