package qemu

import (
	"fmt"
	"runtime"
	"strings"

	"github.com/kiln-build/kiln/errdefs"
)

// archInfo is what kiln knows about one canonical (Debian) architecture.
type archInfo struct {
	uname   string // `uname -m` inside a Linux sandbox of this arch
	goarch  string
	qemu    string // qemu-user's target name: qemu-<qemu>-static, binfmt handler qemu-<qemu>
	freebsd string // FreeBSD MACHINE_ARCH, "" when FreeBSD has no such port
}

// archs is keyed by kiln's canonical names, which are Debian's, because most
// images are Debian and its names are unambiguous about ABI (armhf vs armel).
var archs = map[string]archInfo{
	"amd64":    {uname: "x86_64", goarch: "amd64", qemu: "x86_64", freebsd: "amd64"},
	"arm64":    {uname: "aarch64", goarch: "arm64", qemu: "aarch64", freebsd: "aarch64"},
	"armhf":    {uname: "armv7l", goarch: "arm", qemu: "arm", freebsd: "armv7"},
	"armel":    {uname: "armv7l", goarch: "arm", qemu: "arm"}, // qemu-arm emulates a v7 CPU by default
	"i386":     {uname: "i686", goarch: "386", qemu: "i386", freebsd: "i386"},
	"ppc64el":  {uname: "ppc64le", goarch: "ppc64le", qemu: "ppc64le", freebsd: "powerpc64le"},
	"ppc64":    {uname: "ppc64", goarch: "ppc64", qemu: "ppc64", freebsd: "powerpc64"},
	"s390x":    {uname: "s390x", goarch: "s390x", qemu: "s390x"},
	"riscv64":  {uname: "riscv64", goarch: "riscv64", qemu: "riscv64", freebsd: "riscv64"},
	"mips64el": {uname: "mips64", goarch: "mips64le", qemu: "mips64el"},
	"loong64":  {uname: "loongarch64", goarch: "loong64", qemu: "loongarch64"},
}

// aliases maps every other spelling (Go, uname -m, FreeBSD, qemu) to the
// canonical name. "mips64" is left out on purpose: Go and qemu mean the
// big-endian ABI by it, while a mips64el machine's uname -m prints it too.
var aliases = map[string]string{
	"x86_64": "amd64", "x86-64": "amd64", "x64": "amd64",
	"aarch64": "arm64",
	"armv7l":  "armhf", "armv7": "armhf", "armv7hl": "armhf", "arm": "armhf",
	"armv5tel": "armel", "armv5te": "armel", "armv6l": "armel", "armv6": "armel",
	"i686": "i386", "i586": "i386", "i486": "i386", "386": "i386", "x86": "i386",
	"ppc64le": "ppc64el", "powerpc64le": "ppc64el",
	"powerpc64":   "ppc64",
	"mips64le":    "mips64el",
	"loongarch64": "loong64",
}

// Normalize maps a Go, Debian, FreeBSD, qemu or `uname -m` architecture name
// to kiln's canonical (Debian) name. An unknown name is an error wrapping
// errdefs.ErrInvalid.
func Normalize(arch string) (string, error) {
	a := strings.ToLower(strings.TrimSpace(arch))
	if _, ok := archs[a]; ok {
		return a, nil
	}
	if c, ok := aliases[a]; ok {
		return c, nil
	}
	if a == "mips64" {
		return "", fmt.Errorf("%w: architecture %q is ambiguous: say mips64el (little-endian) explicitly", errdefs.ErrInvalid, arch)
	}
	return "", fmt.Errorf("%w: unknown architecture %q (known: %s)", errdefs.ErrInvalid, arch, strings.Join(Known(), ", "))
}

// Known lists the canonical architecture names, sorted.
func Known() []string {
	return []string{"amd64", "arm64", "armel", "armhf", "i386", "loong64", "mips64el", "ppc64", "ppc64el", "riscv64", "s390x"}
}

func info(arch string) (archInfo, bool) {
	a, err := Normalize(arch)
	if err != nil {
		return archInfo{}, false
	}
	return archs[a], true
}

// qemuName is qemu-user's name for arch, as in qemu-<name>-static and the
// binfmt_misc handler qemu-<name>; "" for an unknown arch.
func qemuName(arch string) string { i, _ := info(arch); return i.qemu }

// DebianArch is Debian's name for arch, which is also kiln's canonical name;
// "" for an unknown arch.
func DebianArch(arch string) string { a, _ := Normalize(arch); return a }

// Native is the canonical name of the architecture this binary runs on.
func Native() string { return DebianArch(runtime.GOARCH) }
