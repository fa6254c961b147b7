package qemu

import (
	"errors"
	"runtime"
	"testing"

	"github.com/kiln-build/kiln/errdefs"
)

func TestNormalize(t *testing.T) {
	tests := []struct{ in, want string }{
		{"amd64", "amd64"}, {"x86_64", "amd64"}, {"X86_64", "amd64"}, {" x86-64 ", "amd64"},
		{"arm64", "arm64"}, {"aarch64", "arm64"},
		{"armhf", "armhf"}, {"armv7l", "armhf"}, {"arm", "armhf"}, {"armv7", "armhf"},
		{"armel", "armel"}, {"armv5tel", "armel"},
		{"i386", "i386"}, {"i686", "i386"}, {"386", "i386"},
		{"ppc64el", "ppc64el"}, {"ppc64le", "ppc64el"}, {"powerpc64le", "ppc64el"},
		{"ppc64", "ppc64"}, {"powerpc64", "ppc64"},
		{"s390x", "s390x"}, {"riscv64", "riscv64"},
		{"mips64el", "mips64el"}, {"mips64le", "mips64el"},
		{"loong64", "loong64"}, {"loongarch64", "loong64"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := Normalize(tt.in)
			if err != nil || got != tt.want {
				t.Fatalf("Normalize(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestNormalizeRejects(t *testing.T) {
	for _, in := range []string{"", "sparc", "mips64", "amd64 ", "x86_65", "../arm64"} {
		t.Run(in, func(t *testing.T) {
			got, err := Normalize(in)
			if in == "amd64 " { // surrounding space is tolerated
				if err != nil || got != "amd64" {
					t.Fatalf("Normalize(%q) = %q, %v", in, got, err)
				}
				return
			}
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Fatalf("Normalize(%q) = %q, %v; want ErrInvalid", in, got, err)
			}
		})
	}
}

func TestNames(t *testing.T) {
	tests := []struct{ arch, uname, goarch, qemu, freebsd string }{
		{"amd64", "x86_64", "amd64", "x86_64", "amd64"},
		{"aarch64", "aarch64", "arm64", "aarch64", "aarch64"},
		{"armhf", "armv7l", "arm", "arm", "armv7"},
		{"i686", "i686", "386", "i386", "i386"},
		{"ppc64le", "ppc64le", "ppc64le", "ppc64le", "powerpc64le"},
		{"s390x", "s390x", "s390x", "s390x", ""},
		{"riscv64", "riscv64", "riscv64", "riscv64", "riscv64"},
		{"mips64el", "mips64", "mips64le", "mips64el", ""},
		{"bogus", "", "", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.arch, func(t *testing.T) {
			if got := Uname(tt.arch); got != tt.uname {
				t.Errorf("Uname = %q, want %q", got, tt.uname)
			}
			if got := GoArch(tt.arch); got != tt.goarch {
				t.Errorf("GoArch = %q, want %q", got, tt.goarch)
			}
			if got := qemuName(tt.arch); got != tt.qemu {
				t.Errorf("qemuName = %q, want %q", got, tt.qemu)
			}
			if got := FreeBSDArch(tt.arch); got != tt.freebsd {
				t.Errorf("FreeBSDArch = %q, want %q", got, tt.freebsd)
			}
		})
	}
}

// Every canonical arch must survive a trip through its other spellings, or
// a worker and the server would disagree on what an arch is called.
func TestRoundTrip(t *testing.T) {
	for _, a := range Known() {
		t.Run(a, func(t *testing.T) {
			if DebianArch(a) != a {
				t.Fatalf("DebianArch(%q) = %q", a, DebianArch(a))
			}
			if got, _ := Normalize(GoArch(a)); got != a && a != "armel" {
				t.Errorf("Normalize(GoArch) = %q", got)
			}
			if u := Uname(a); u != "mips64" {
				if got, _ := Normalize(u); got != a && a != "armel" {
					t.Errorf("Normalize(Uname %q) = %q", u, got)
				}
			}
		})
	}
}

func TestNative(t *testing.T) {
	if got := GoArch(Native()); got != runtime.GOARCH {
		t.Fatalf("GoArch(Native()) = %q, want %q", got, runtime.GOARCH)
	}
}
