package qemu

import (
	"bytes"
	"context"
	"errors"
	"os"
	"slices"
	"testing"

	"github.com/kiln-build/kiln/errdefs"
)

func readTestdata(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseProcHandler(t *testing.T) {
	tests := []struct {
		file             string
		enabled, fixed   bool
		kind, interp     string
		magicLen, maskLn int
		archs            []string
	}{
		{"proc-qemu-aarch64", true, true, "M", "/usr/libexec/qemu-binfmt/aarch64-binfmt-P", 20, 20, []string{"arm64"}},
		{"proc-qemu-ppc64le", false, false, "M", "/usr/bin/qemu-ppc64le", 20, 20, []string{"ppc64el"}},
		{"proc-jar", true, false, "M", "/usr/bin/jexec", 4, 0, nil},
		{"proc-cli", true, false, "E", "/usr/bin/mono", 3, 0, nil},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			name := tt.file[len("proc-"):]
			h, err := ParseProcHandler(name, readTestdata(t, tt.file))
			if err != nil {
				t.Fatal(err)
			}
			if h.Enabled != tt.enabled || h.Fixed != tt.fixed || h.Kind != tt.kind || h.Interpreter != tt.interp ||
				len(h.Magic) != tt.magicLen || len(h.Mask) != tt.maskLn {
				t.Fatalf("got %+v", h)
			}
			if got := handlerArchs(h); !slices.Equal(got, tt.archs) {
				t.Fatalf("archs = %v, want %v", got, tt.archs)
			}
		})
	}
	if _, err := ParseProcHandler("x", []byte("enabled\nflags: F\n")); err == nil {
		t.Fatal("entry without interpreter accepted")
	}
}

func TestParseConf(t *testing.T) {
	hs, err := ParseConf(readTestdata(t, "mixed.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if len(hs) != 3 {
		t.Fatalf("got %d handlers, want 3: %+v", len(hs), hs)
	}
	tests := []struct {
		name, kind, flags string
		fixed             bool
		archs             []string
		magic0            byte
	}{
		{"qemu-s390x", "M", "OC", false, []string{"s390x"}, 0x7f},
		{"qemu-arm", "M", "F", true, []string{"armel", "armhf"}, 0x7f},
		{"DOSWin", "E", "", false, nil, 'e'},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := hs[i]
			if h.Name != tt.name || h.Kind != tt.kind || h.Flags != tt.flags || h.Fixed != tt.fixed || h.Magic[0] != tt.magic0 {
				t.Fatalf("got %+v", h)
			}
			if got := handlerArchs(h); !slices.Equal(got, tt.archs) {
				t.Fatalf("archs = %v, want %v", got, tt.archs)
			}
		})
	}
}

// The distribution's own file must parse, and RegisterLine must reproduce
// it with F added, byte for byte in meaning.
func TestRegisterLineRoundTrip(t *testing.T) {
	hs, err := ParseConf(readTestdata(t, "qemu-aarch64.conf"))
	if err != nil || len(hs) != 1 {
		t.Fatalf("%v %v", hs, err)
	}
	h := hs[0]
	if h.Name != "qemu-aarch64" || !h.Fixed || h.Magic[18] != 0xb7 || h.Mask[7] != 0 {
		t.Fatalf("got %+v", h)
	}
	tests := []struct{ flags, want string }{{"OPF", "OPF"}, {"OC", "OCF"}, {"", "F"}}
	for _, tt := range tests {
		t.Run("flags="+tt.flags, func(t *testing.T) {
			h.Flags = tt.flags
			back, err := ParseConfLine(RegisterLine(h))
			if err != nil {
				t.Fatal(err)
			}
			if back.Flags != tt.want || !back.Fixed || !bytes.Equal(back.Magic, h.Magic) || !bytes.Equal(back.Mask, h.Mask) ||
				back.Interpreter != h.Interpreter || back.Name != h.Name || back.Offset != h.Offset {
				t.Fatalf("round trip: %+v -> %q -> %+v", h, RegisterLine(h), back)
			}
		})
	}
}

func TestParseConfLineRejects(t *testing.T) {
	for _, line := range []string{
		"",
		":a:M::\\x7f:",                      // too few fields
		":a:X::\\x7f::/bin/true:F",          // bad type
		":a:M:-1:\\x7f::/bin/true:F",        // bad offset
		":a:M::\\x7:\\xff:/bin/true:F",      // bad escape
		":a:M::\\x7f\\x45:\\xff:/bin/true:", // mask shorter than magic
		":a:M::\\x7f::true:F",               // relative interpreter
		":register:M::\\x7f::/bin/true:F",   // reserved name
		":../x:M::\\x7f::/bin/true:F",       // path in name
	} {
		t.Run(line, func(t *testing.T) {
			if h, err := ParseConfLine(line); !errors.Is(err, errdefs.ErrInvalid) {
				t.Fatalf("accepted: %+v, %v", h, err)
			}
		})
	}
}

func TestParseBinmiscctlList(t *testing.T) {
	hs, err := ParseBinmiscctlList(readTestdata(t, "binmiscctl-list.txt"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, interp    string
		enabled, fixed  bool
		magicLen, maskN int
		archs           []string
	}{
		{"qemu_aarch64", "/usr/local/bin/qemu-aarch64-static", true, true, 20, 20, []string{"arm64"}},
		{"qemu_armv7", "/usr/local/bin/qemu-arm-static", true, false, 20, 20, []string{"armel", "armhf"}},
		{"qemu_riscv64", "/usr/local/bin/qemu-riscv64-static", false, true, 20, 20, []string{"riscv64"}},
		{"llvmbc", "/usr/bin/lli", true, false, 2, 0, nil},
	}
	if len(hs) != len(tests) {
		t.Fatalf("got %d activators: %+v", len(hs), hs)
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := hs[i]
			if h.Name != tt.name || h.Interpreter != tt.interp || h.Enabled != tt.enabled || h.Fixed != tt.fixed ||
				len(h.Magic) != tt.magicLen || len(h.Mask) != tt.maskN {
				t.Fatalf("got %+v", h)
			}
			if got := handlerArchs(h); !slices.Equal(got, tt.archs) {
				t.Fatalf("archs = %v, want %v", got, tt.archs)
			}
		})
	}
	if hs[0].Magic[18] != 0xb7 || hs[0].Mask[16] != 0xfe {
		t.Fatalf("continuation lines misread: magic %x mask %x", hs[0].Magic, hs[0].Mask)
	}
	// The FreeBSD rule: only ENABLED and PRE_OPEN activators count.
	c := capabilities("amd64", hs, nil, func(h Handler) bool { return h.Enabled && h.Fixed })
	if !slices.Equal(c.Emulated, []string{"arm64"}) {
		t.Fatalf("emulated = %v, want [arm64]", c.Emulated)
	}
	if _, err := ParseBinmiscctlList([]byte("interpreter: /x\n")); err == nil {
		t.Fatal("activator without a name accepted")
	}
}

func TestBinmiscctlAddArgv(t *testing.T) {
	hs, err := ParseBinmiscctlList(readTestdata(t, "binmiscctl-list.txt"))
	if err != nil {
		t.Fatal(err)
	}
	argv := BinmiscctlAddArgv(hs[1])
	want := []string{"binmiscctl", "add", "qemu_armv7", "--interpreter", "/usr/local/bin/qemu-arm-static",
		"--magic", `\x7f\x45\x4c\x46\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x28\x00`,
		"--mask", `\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff`,
		"--size", "20", "--offset", "0", "--set-enabled", "--pre-open"}
	if !slices.Equal(argv, want) {
		t.Fatalf("got  %q\nwant %q", argv, want)
	}
}

func TestCapabilitiesAndCheck(t *testing.T) {
	h := func(name string, enabled, fixed bool) Handler {
		return Handler{Name: name, Enabled: enabled, Fixed: fixed, Interpreter: "/usr/bin/" + name + "-static"}
	}
	registered := []Handler{h("qemu-aarch64", true, true), h("qemu-s390x", false, true), h("qemu-riscv64", true, false), h("jar", true, false)}
	shipped := []Handler{h("qemu-mips64el", true, true)}
	c := capabilities("amd64", registered, shipped, func(h Handler) bool { return h.Enabled && h.Fixed })
	if !slices.Equal(c.Emulated, []string{"arm64"}) || !slices.Equal(c.Archs(), []string{"amd64", "arm64"}) {
		t.Fatalf("emulated = %v", c.Emulated)
	}
	ctx := context.Background()
	for _, a := range []string{"amd64", "x86_64", "arm64", "aarch64"} {
		if err := Check(ctx, c, a, false); err != nil {
			t.Errorf("Check(%s) = %v", a, err)
		}
	}
	if err := Check(ctx, c, "vax", false); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("Check(vax) = %v, want ErrInvalid", err)
	}
	for _, a := range []string{"s390x", "riscv64", "mips64el", "ppc64el"} {
		err := Check(ctx, c, a, false)
		if !errors.Is(err, errdefs.ErrUnsupported) {
			t.Errorf("Check(%s) = %v, want ErrUnsupported", a, err)
		}
	}
}
