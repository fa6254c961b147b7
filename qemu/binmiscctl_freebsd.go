package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"github.com/kiln-build/kiln/errdefs"
)

// Paths of the emulators/qemu-user-static port.
const (
	portBinDir = "/usr/local/bin"
	portRcd    = "/usr/local/etc/rc.d/qemu_user_static"
)

// Detect reports what this host can run: the native arch, plus every arch
// whose binmiscctl(8) image activator is ENABLED and PRE_OPEN. Without
// PRE_OPEN the kernel looks the emulator up inside the jail's root at every
// exec, so it would have to be copied into each image; kiln never does that.
func Detect(ctx context.Context) (Capabilities, error) {
	out, err := run(ctx, "binmiscctl", "list")
	if err != nil {
		return Capabilities{}, err
	}
	registered, err := ParseBinmiscctlList(out)
	if err != nil {
		return Capabilities{}, err
	}
	var shipped []Handler
	for _, a := range Known() {
		q := qemuName(a)
		p := portBinDir + "/qemu-" + q + "-static"
		if _, err := os.Stat(p); err == nil {
			shipped = append(shipped, Handler{Name: "qemu_" + q, Interpreter: p})
		}
	}
	return capabilities(Native(), registered, shipped, func(h Handler) bool { return h.Enabled && h.Fixed }), nil
}

// Register makes arch runnable when the qemu-user-static port is installed:
// it starts the port's rc script if no activator exists, enables a disabled
// one, and re-adds one without PRE_OPEN with it. A no-op for the native arch
// and for an arch already runnable. Needs root.
func Register(ctx context.Context, arch string) error {
	a, err := Normalize(arch)
	if err != nil {
		return err
	}
	caps, err := Detect(ctx)
	if err != nil {
		return err
	}
	if caps.Runnable(a) {
		return nil
	}
	h, ok := caps.Handlers[a]
	if !ok {
		if _, err := os.Stat(portRcd); err != nil {
			return fmt.Errorf("%w: no image activator for %s and qemu-user-static is not installed (pkg install qemu-user-static)", errdefs.ErrUnsupported, a)
		}
		if _, err := run(ctx, "service", "qemu_user_static", "onestart"); err != nil {
			return err
		}
		if caps, err = Detect(ctx); err != nil {
			return err
		}
		if caps.Runnable(a) {
			return nil
		}
		if h, ok = caps.Handlers[a]; !ok {
			return fmt.Errorf("%w: qemu_user_static registered no image activator for %s", errdefs.ErrUnsupported, a)
		}
	}
	if h.Fixed {
		_, err = run(ctx, "binmiscctl", "enable", h.Name)
	} else {
		if _, err = run(ctx, "binmiscctl", "remove", h.Name); err == nil {
			argv := BinmiscctlAddArgv(h)
			_, err = run(ctx, argv[0], argv[1:]...)
		}
	}
	if err != nil {
		return err
	}
	if caps, err = Detect(ctx); err != nil {
		return err
	}
	if !caps.Runnable(a) {
		return fmt.Errorf("%w: image activator %s is still not enabled with PRE_OPEN", errdefs.ErrUnsupported, h.Name)
	}
	return nil
}

func run(ctx context.Context, name string, args ...string) ([]byte, error) {
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return nil, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
		}
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return out, nil
}

// advice says what an admin should do so that arch runs.
func advice(c Capabilities, arch string) string {
	h, registered := c.Handlers[arch]
	_, shipped := c.Shipped[arch]
	switch {
	case registered && !h.Fixed:
		return fmt.Sprintf("the image activator %s lacks PRE_OPEN, so its emulator would have to exist inside every jail: set qemu.register = true in worker.toml so kiln re-adds it with --pre-open", h.Name)
	case registered && !h.Enabled:
		return fmt.Sprintf("the image activator %s is disabled: run `binmiscctl enable %s`, or set qemu.register = true in worker.toml", h.Name, h.Name)
	case shipped:
		return "qemu-user-static is installed but not registered: run `sysrc qemu_user_static_enable=YES && service qemu_user_static start`, or set qemu.register = true in worker.toml"
	default:
		return "run `pkg install qemu-user-static`, then `sysrc qemu_user_static_enable=YES && service qemu_user_static start`"
	}
}
