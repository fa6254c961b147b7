package qemu

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/kiln-build/kiln/errdefs"
)

// binfmt is a binfmt_misc mount plus the binfmt.d directories holding the
// distribution's definitions, in systemd's precedence order (a file name in
// an earlier directory hides the same name in a later one).
type binfmt struct {
	dir      string
	confDirs []string
}

func hostBinfmt() binfmt {
	return binfmt{
		dir:      "/proc/sys/fs/binfmt_misc",
		confDirs: []string{"/etc/binfmt.d", "/run/binfmt.d", "/usr/lib/binfmt.d"},
	}
}

// Detect reports what this host can run: the native arch, plus every arch
// whose binfmt_misc handler is enabled and has the F flag. Without F the
// kernel looks the emulator up inside the sandbox's root at every exec, so
// it would have to be copied into each image; kiln never does that.
// Detect mounts binfmt_misc when it is not mounted (which needs root).
func Detect(ctx context.Context) (Capabilities, error) { return hostBinfmt().detect(ctx) }

// Register makes arch runnable when qemu-user-static is installed but its
// binfmt_misc handler is missing, disabled or lacks the F flag: it enables
// the handler, or (re-)registers it with F from the distribution's binfmt.d
// definition. A no-op for the native arch and for an arch already runnable.
// Safe to call concurrently with other processes doing the same; needs root.
func Register(ctx context.Context, arch string) error { return hostBinfmt().register(ctx, arch) }

func (b binfmt) mount() error {
	if _, err := os.Stat(filepath.Join(b.dir, "register")); err == nil {
		return nil
	}
	if err := syscall.Mount("binfmt_misc", b.dir, "binfmt_misc", 0, ""); err != nil && !errors.Is(err, syscall.EBUSY) {
		return fmt.Errorf("mount binfmt_misc on %s: %w", b.dir, err)
	}
	return nil
}

func (b binfmt) detect(ctx context.Context) (Capabilities, error) {
	if err := ctx.Err(); err != nil {
		return Capabilities{}, err
	}
	if err := b.mount(); err != nil {
		return Capabilities{}, err
	}
	registered, err := b.handlers()
	if err != nil {
		return Capabilities{}, err
	}
	shipped, err := b.definitions()
	if err != nil {
		return Capabilities{}, err
	}
	status, err := os.ReadFile(filepath.Join(b.dir, "status"))
	if err != nil {
		return Capabilities{}, fmt.Errorf("binfmt_misc status: %w", err)
	}
	off := strings.TrimSpace(string(status)) != "enabled"
	c := capabilities(Native(), registered, shipped, func(h Handler) bool { return !off && h.Enabled && h.Fixed })
	c.Off = off
	return c, nil
}

// handlers reads the registered entries.
func (b binfmt) handlers() ([]Handler, error) {
	ents, err := os.ReadDir(b.dir)
	if err != nil {
		return nil, fmt.Errorf("read binfmt_misc: %w", err)
	}
	var hs []Handler
	for _, e := range ents {
		if e.Name() == "register" || e.Name() == "status" {
			continue
		}
		data, err := os.ReadFile(filepath.Join(b.dir, e.Name()))
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("read binfmt_misc entry: %w", err)
		}
		h, err := ParseProcHandler(e.Name(), data)
		if err != nil {
			return nil, err
		}
		hs = append(hs, h)
	}
	return hs, nil
}

// definitions reads the binfmt.d files, keeping only definitions whose
// interpreter is installed (F opens it at registration).
func (b binfmt) definitions() ([]Handler, error) {
	seen := map[string]bool{}
	var hs []Handler
	for _, d := range b.confDirs {
		files, err := filepath.Glob(filepath.Join(d, "*.conf"))
		if err != nil {
			return nil, err
		}
		for _, f := range files {
			if seen[filepath.Base(f)] {
				continue
			}
			seen[filepath.Base(f)] = true
			data, err := os.ReadFile(f)
			if err != nil {
				return nil, fmt.Errorf("read binfmt definitions: %w", err)
			}
			defs, err := ParseConf(data)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", f, err)
			}
			for _, h := range defs {
				if _, err := os.Stat(h.Interpreter); err == nil {
					h.Source = f
					hs = append(hs, h)
				}
			}
		}
	}
	return hs, nil
}

func (b binfmt) register(ctx context.Context, arch string) error {
	a, err := Normalize(arch)
	if err != nil {
		return err
	}
	caps, err := b.detect(ctx)
	if err != nil {
		return err
	}
	if caps.Runnable(a) {
		return nil
	}
	if caps.Off {
		return fmt.Errorf("%w: binfmt_misc is disabled host-wide (%s/status); kiln does not switch it on for the whole host", errdefs.ErrUnsupported, b.dir)
	}
	def, shipped := caps.Shipped[a]
	if h, ok := caps.Handlers[a]; ok {
		if h.Fixed {
			return b.enable(ctx, h.Name)
		}
		if !shipped {
			return fmt.Errorf("%w: handler %s lacks the F flag and no qemu-user-static definition to replace it is installed", errdefs.ErrUnsupported, h.Name)
		}
		if err := b.write(filepath.Join(b.dir, h.Name), "-1"); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove handler %s without F flag: %w", h.Name, err)
		}
	} else if !shipped {
		return fmt.Errorf("%w: no binfmt definition for %s is installed (apt-get install qemu-user-static)", errdefs.ErrUnsupported, a)
	}
	return b.install(ctx, def)
}

// install registers h with the F flag and checks the kernel took it. A
// concurrent registration of the same name (EEXIST) is fine if it has F.
func (b binfmt) install(ctx context.Context, h Handler) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := b.write(filepath.Join(b.dir, "register"), RegisterLine(h)); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("register binfmt handler %s: %w", h.Name, err)
	}
	return b.verify(h.Name)
}

// enable switches on a registered handler.
func (b binfmt) enable(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := b.write(filepath.Join(b.dir, name), "1"); err != nil {
		return fmt.Errorf("enable binfmt handler %s: %w", name, err)
	}
	return b.verify(name)
}

func (b binfmt) verify(name string) error {
	data, err := os.ReadFile(filepath.Join(b.dir, name))
	if err != nil {
		return fmt.Errorf("binfmt handler %s after registration: %w", name, err)
	}
	h, err := ParseProcHandler(name, data)
	if err != nil {
		return err
	}
	if !h.Enabled || !h.Fixed {
		return fmt.Errorf("%w: binfmt handler %s is registered but enabled=%t, flags %q (want enabled with F)", errdefs.ErrUnsupported, name, h.Enabled, h.Flags)
	}
	return nil
}

// write does one write(2), as binfmt_misc parses each write as a whole.
func (b binfmt) write(file, s string) error {
	f, err := os.OpenFile(file, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.Write([]byte(s))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// adviceHost is what of the host the advice depends on.
type adviceHost struct {
	updateBinfmts bool // binfmt-support's update-binfmts is installed
	systemd       bool // systemd runs (and with it systemd-binfmt)
	binfmtDir     string
}

func hostAdvice() adviceHost {
	_, err := exec.LookPath("update-binfmts")
	_, serr := os.Stat("/run/systemd/system")
	return adviceHost{updateBinfmts: err == nil, systemd: serr == nil, binfmtDir: hostBinfmt().dir}
}

// advice says what an admin should do so that arch runs.
func advice(c Capabilities, arch string) string { return hostAdvice().advice(c, arch) }

// advice names only commands this host has: update-binfmts when
// binfmt-support is installed (Debian's qemu-user-static does not pull it
// in), systemd-binfmt where systemd runs, and otherwise a write of the
// distribution's own binfmt.d definition to binfmt_misc.
func (ah adviceHost) advice(c Capabilities, arch string) string {
	const register = "set qemu.register = true in worker.toml"
	name := "qemu-" + qemuName(arch)
	h, registered := c.Handlers[arch]
	def, shipped := c.Shipped[arch]
	// fromDefinition registers name from what qemu-user-static installed.
	fromDefinition := func(name, source string) string {
		var ways []string
		if ah.updateBinfmts {
			ways = append(ways, fmt.Sprintf("`update-binfmts --enable %s`", name))
		}
		if ah.systemd {
			ways = append(ways, "`systemctl restart systemd-binfmt`")
		}
		if source != "" {
			ways = append(ways, fmt.Sprintf("`cat %s > %s/register`", source, ah.binfmtDir))
		}
		if len(ways) == 0 {
			return register
		}
		return "run " + strings.Join(ways, ", or ") + ", or " + register
	}
	switch {
	case c.Off:
		return fmt.Sprintf("binfmt_misc is disabled host-wide: run `echo 1 > %s/status`", ah.binfmtDir)
	case registered && !h.Enabled && h.Fixed:
		enable := fmt.Sprintf("`echo 1 > %s/%s`", ah.binfmtDir, h.Name)
		if ah.updateBinfmts {
			enable = fmt.Sprintf("`update-binfmts --enable %s`", h.Name)
		}
		return fmt.Sprintf("the binfmt_misc handler %s is disabled: run %s, or %s", h.Name, enable, register)
	case registered && !h.Fixed:
		return fmt.Sprintf("the binfmt_misc handler %s lacks the F (fix-binary) flag, so its emulator would have to exist inside every image: "+
			"install qemu-user-static (`apt-get install qemu-user-static`; its handlers carry F) and %s so kiln re-registers it with F", h.Name, register)
	case shipped:
		return fmt.Sprintf("qemu-user-static is installed but its %s handler is not registered: %s", name, fromDefinition(name, def.Source))
	default:
		return fmt.Sprintf("run `apt-get install qemu-user-static` (it registers %s with the F flag; if binfmt_misc was not mounted at install time, "+
			"%s afterwards)", name, fromDefinition(name, "/usr/lib/binfmt.d/"+name+".conf"))
	}
}
