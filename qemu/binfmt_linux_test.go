package qemu_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/internal/testsupport"
	. "github.com/kiln-build/kiln/qemu"
)

// TestDetectHost reads this host's real binfmt_misc. qemu-user-static
// registers its handlers with F, so arm64 and s390x must be runnable.
func TestDetectHost(t *testing.T) {
	testsupport.NeedRoot(t)
	_, err := os.Stat("/usr/bin/qemu-aarch64-static")
	testsupport.Need(t, err == nil, "qemu-user-static installed")
	caps, err := Detect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if caps.Native != Native() {
		t.Fatalf("native = %q", caps.Native)
	}
	for a, handler := range map[string]string{"arm64": "qemu-aarch64", "s390x": "qemu-s390x"} {
		t.Run(a, func(t *testing.T) {
			if !slices.Contains(caps.Emulated, a) {
				t.Fatalf("emulated %v lacks %s (handlers: %+v)", caps.Emulated, a, caps.Handlers[a])
			}
			h := caps.Handlers[a]
			if h.Name != handler || !h.Enabled || !h.Fixed {
				t.Fatalf("handler %+v", h)
			}
			if _, ok := caps.Shipped[a]; !ok {
				t.Fatalf("no shipped definition for %s", a)
			}
			if err := Check(context.Background(), caps, a, false); err != nil {
				t.Fatal(err)
			}
		})
	}
	if slices.Contains(caps.Emulated, caps.Native) {
		t.Fatalf("native arch listed as emulated: %v", caps.Emulated)
	}
	// Registering what already runs changes nothing and succeeds.
	before, _ := os.ReadFile("/proc/sys/fs/binfmt_misc/qemu-aarch64")
	if err := Register(context.Background(), "aarch64"); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile("/proc/sys/fs/binfmt_misc/qemu-aarch64")
	if string(before) != string(after) {
		t.Fatalf("Register changed a working handler:\n%s\n%s", before, after)
	}
}

// TestInstallMadeUpHandler registers a handler no real file matches (magic
// "\0KILNTEST\0"), checks the kernel took it with F, disables it and lets
// enable switch it back on, then removes it.
func TestInstallMadeUpHandler(t *testing.T) {
	testsupport.NeedRoot(t)
	if err := MountBinfmt(); err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("kiln-test-%d", os.Getpid())
	entry := filepath.Join(BinfmtDir(), name)
	t.Cleanup(func() {
		if err := WriteEntry(name, "-1"); err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("remove test handler: %v", err)
		}
	})
	h := Handler{Name: name, Kind: "M", Magic: []byte("\x00KILNTEST\x00"), Interpreter: "/bin/true"}
	ctx := context.Background()
	if err := InstallHandler(ctx, h); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		prep string // written to the entry before the step
		step func() error
	}{
		{"installed again", "", func() error { return InstallHandler(ctx, h) }},
		{"re-enabled", "0", func() error { return EnableHandler(ctx, name) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.prep != "" {
				if err := WriteEntry(name, tt.prep); err != nil {
					t.Fatal(err)
				}
				if err := VerifyHandler(name); !errors.Is(err, errdefs.ErrUnsupported) {
					t.Fatalf("disabled handler verified: %v", err)
				}
			}
			if err := tt.step(); err != nil {
				t.Fatal(err)
			}
			data, err := os.ReadFile(entry)
			if err != nil {
				t.Fatal(err)
			}
			got, err := ParseProcHandler(name, data)
			if err != nil {
				t.Fatal(err)
			}
			if !got.Enabled || !got.Fixed || string(got.Magic) != string(h.Magic) || got.Interpreter != "/bin/true" {
				t.Fatalf("kernel has %+v", got)
			}
		})
	}
}

// A host with no definitions must refuse with what to install, and say so
// through ErrUnsupported, without touching binfmt_misc.
func TestRegisterWithoutDefinitions(t *testing.T) {
	testsupport.NeedRoot(t)
	dirs := []string{t.TempDir()}
	caps, err := DetectWithConfDirs(context.Background(), dirs)
	if err != nil {
		t.Fatal(err)
	}
	// An arch Debian's qemu-user-static registers nowhere on amd64.
	arch := "i386"
	if caps.Runnable(arch) {
		t.Skipf("%s already runnable here", arch)
	}
	err = RegisterWithConfDirs(context.Background(), arch, dirs)
	if !errors.Is(err, errdefs.ErrUnsupported) {
		t.Fatalf("register(%s) = %v, want ErrUnsupported", arch, err)
	}
}
