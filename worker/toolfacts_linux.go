package worker

import (
	"context"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/kiln-build/kiln/config"
	"github.com/kiln-build/kiln/qemu"
)

// toolFacts records the versions of the programs that run a job's code,
// which can change what it builds, for the provenance (attest.HostFactKeys):
// runc (what the runc shim runs, found on PATH as the shim finds it),
// runsc, the VM tier's qemu-system, and the qemu-user interpreter of each
// emulated arch ("arm64=qemu-aarch64 version 7.2.11 (...)", comma
// separated). A program that is missing is left out; one that does not
// answer is "unknown".
func toolFacts(ctx context.Context, cfg *config.Host, f map[string]string) {
	for _, t := range []struct{ fact, bin string }{
		{"runc", "runc"},
		{"runsc", "runsc"},
		{"qemu", cmp(cfg.VM.Qemu, "qemu-system-x86_64")},
	} {
		if p, err := exec.LookPath(t.bin); err == nil {
			f[t.fact] = toolVersion(ctx, p)
		}
	}
	caps, err := qemu.Detect(ctx)
	if err != nil {
		return
	}
	var user []string
	for _, arch := range caps.Emulated {
		if h, ok := caps.Handlers[arch]; ok && h.Interpreter != "" {
			// Debian registers /usr/libexec/qemu-binfmt/ARCH-binfmt-P, a
			// link to qemu-ARCH-static that refuses to run under that
			// name outside binfmt_misc: ask the binary it names.
			bin := h.Interpreter
			if p, err := filepath.EvalSymlinks(bin); err == nil {
				bin = p
			}
			user = append(user, arch+"="+toolVersion(ctx, bin))
		}
	}
	slices.Sort(user)
	if len(user) > 0 {
		f["qemu_user"] = strings.Join(user, ",")
	}
}

// toolVersion is the first line of `bin --version`.
func toolVersion(ctx context.Context, bin string) string {
	out, err := exec.CommandContext(ctx, bin, "--version").Output()
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	if err != nil || line == "" {
		return "unknown"
	}
	return strings.ReplaceAll(line, ",", ";") // qemu_user joins with ','
}

func cmp(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
