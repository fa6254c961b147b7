package sandbox

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
)

// TestPlanClock: the time variation preloads the host's libfaketime only
// into an image whose glibc can load it, writing the clone's
// /etc/ld.so.preload and /etc/faketimerc (links there replaced, never
// written through); any other image gets a note and no change, so a run
// is never broken by a library its dynamic linker refuses.
func TestPlanClock(t *testing.T) {
	lib := HostFaketime()
	ma := faketimeMultiarch[runtime.GOARCH]
	hostLibc := "/lib/" + ma + "/libc.so.6"
	for _, p := range []string{lib, hostLibc} {
		if _, err := os.Stat(p); err != nil {
			// CI must have it (.ci/prereqs-runtime installs libfaketime).
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s (apt-get install libfaketime): %v", p, err)
			}
			t.Skipf("%s (apt-get install libfaketime): %v", p, err)
		}
	}
	putLibc := func(t *testing.T, root, src string) {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(root, "lib", ma, "libc.so.6")
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name     string
		setup    func(t *testing.T, root, outside string)
		wantNote string // "": planned
	}{
		{"host glibc", func(t *testing.T, root, _ string) { putLibc(t, root, hostLibc) }, ""},
		{"preload and rc links out of the clone", func(t *testing.T, root, outside string) {
			putLibc(t, root, hostLibc)
			for _, n := range []string{"ld.so.preload", "faketimerc"} {
				if err := os.Symlink(filepath.Join(outside, n), filepath.Join(root, "etc", n)); err != nil {
					t.Fatal(err)
				}
			}
		}, ""},
		{"no libc (static or musl image)", func(*testing.T, string, string) {}, "the image has no glibc"},
		{"libc links out of the clone", func(t *testing.T, root, _ string) {
			p := filepath.Join(root, "lib", ma)
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(hostLibc, filepath.Join(p, "libc.so.6")); err != nil {
				t.Fatal(err)
			}
		}, "the image has no glibc"},
		{"libc not a library", func(t *testing.T, root, _ string) { putLibc(t, root, "/bin/busybox") }, "libc.so.6 "},
		{"libc a FIFO", func(t *testing.T, root, _ string) {
			p := filepath.Join(root, "lib", ma)
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := syscall.Mkfifo(filepath.Join(p, "libc.so.6"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, "is not a regular file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root, outside := t.TempDir(), t.TempDir()
			if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
				t.Fatal(err)
			}
			tt.setup(t, root, outside)
			plan, note, err := planClock(root, lib, "+398d")
			if err != nil {
				t.Fatal(err)
			}
			if tt.wantNote != "" {
				if plan != nil || !strings.Contains(note, tt.wantNote) {
					t.Fatalf("plan %v, note %q; want no plan, a note with %q", plan, note, tt.wantNote)
				}
				if _, err := os.Lstat(filepath.Join(root, "etc", "ld.so.preload")); err == nil {
					t.Fatal("an image that cannot load libfaketime got an /etc/ld.so.preload")
				}
				return
			}
			if plan == nil {
				t.Fatalf("no plan: %s", note)
			}
			in := faketimeDir + "/libfaketime.so.1"
			for n, want := range map[string]string{"ld.so.preload": in + "\n", "faketimerc": "+398d\n"} {
				p := filepath.Join(root, "etc", n)
				st, err := os.Lstat(p)
				if err != nil || !st.Mode().IsRegular() {
					t.Fatalf("%s: %v %v; want a regular file", n, st, err)
				}
				if b, _ := os.ReadFile(p); string(b) != want {
					t.Errorf("%s = %q, want %q", n, b, want)
				}
				if _, err := os.Stat(filepath.Join(outside, n)); err == nil {
					t.Errorf("%s was written through the image's link, outside the clone", n)
				}
			}
			if plan.mount.Target != faketimeDir || !plan.mount.ReadOnly || plan.mount.Source != filepath.Dir(lib) {
				t.Errorf("mount %+v", plan.mount)
			}
			env := withClock([]string{"PATH=/bin", "LD_PRELOAD=/job.so", "FAKETIME=-1d"}, plan)
			want := []string{"PATH=/bin", "FAKETIME=+398d", "FAKETIME_DONT_FAKE_MONOTONIC=1", "FAKETIME_DONT_RESET=1", "LD_PRELOAD=" + in + ":/job.so"}
			if strings.Join(env, " ") != strings.Join(want, " ") {
				t.Errorf("env %q, want %q", env, want)
			}
		})
	}
}

// TestPlanClockRefusesOffsets: only whole days ahead reach libfaketime
// (its FAKETIME has other forms, absolute times, rates, that no group sets).
func TestPlanClockRefusesOffsets(t *testing.T) {
	for _, o := range []string{"", "-398d", "+0d", "@2000-01-01 00:00:00", "+1d x1000", "+1d\n"} {
		if _, _, err := planClock(t.TempDir(), "/nonexistent", o); err == nil {
			t.Errorf("offset %q accepted", o)
		}
		if err := (Variations{Clock: o}).check(); o != "" && err == nil {
			t.Errorf("Variations.check accepted clock %q", o)
		}
	}
}
