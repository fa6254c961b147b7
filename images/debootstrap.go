package images

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/kiln-build/kiln/qemu"
	"github.com/kiln-build/kiln/sandbox"
)

// debootstrap builds a Debian tree. A foreign arch runs the first stage on
// the host (download and unpack only) and the second stage chrooted into
// the tree, where the kernel hands every foreign binary to qemu-user
// through a binfmt_misc handler with the F flag - so no emulator is copied
// into the image.
func debootstrap(ctx context.Context, m *Manager, env *buildEnv, s methodSpec) error {
	foreign := s.Arch != qemu.Native()
	if foreign {
		caps, err := qemu.Detect(ctx)
		if err == nil {
			err = qemu.Check(ctx, caps, s.Arch, false)
		}
		if err != nil {
			return env.fail("check qemu-user for "+s.Arch, err)
		}
	}
	args := []string{"--variant=minbase", "--arch=" + s.Arch}
	if len(s.Packages) > 0 {
		args = append(args, "--include="+strings.Join(s.Packages, ","))
	}
	if foreign {
		args = append(args, "--foreign")
	}
	args = append(args, s.Version, env.root)
	if m.opts.Mirror != "" {
		args = append(args, m.opts.Mirror)
	}
	p := &debootstrapProgress{w: env.progress}
	lw := &lineWriter{fn: p.line}
	step := "debootstrap"
	if foreign {
		step = "debootstrap (first stage)"
	}
	fmt.Fprintf(env.progress, "debootstrap %s %s (%s)\n", s.Version, s.Arch, strings.Join(args[:len(args)-2], " "))
	if err := env.run(ctx, step, lw, "debootstrap", args...); err != nil {
		return err
	}
	if foreign {
		if err := env.run(ctx, "debootstrap (second stage, through qemu-user)", lw, "chroot", env.root, "/debootstrap/debootstrap", "--second-stage"); err != nil {
			return err
		}
	}
	p.flush()
	return nil
}

// debootstrapProgress turns debootstrap's "I:" lines into a few lines of
// progress: each stage once, and package counts per stage instead of one
// line per package.
type debootstrapProgress struct {
	w     io.Writer
	verb  string // the per-package verb being counted
	count int
}

func (p *debootstrapProgress) line(l string) {
	msg, ok := strings.CutPrefix(strings.TrimSpace(l), "I: ")
	if !ok {
		if strings.HasPrefix(l, "W: ") || strings.HasPrefix(l, "E: ") {
			p.flush()
			fmt.Fprintln(p.w, "debootstrap:", l)
		}
		return
	}
	words := strings.Fields(msg)
	if len(words) == 0 {
		return
	}
	verb := words[0]
	perPackage := false
	switch verb {
	case "Retrieving", "Validating":
		perPackage = len(words) == 3
	case "Extracting", "Unpacking", "Configuring":
		perPackage = len(words) == 2 && strings.HasSuffix(words[1], "...")
	}
	if !perPackage {
		p.flush()
		fmt.Fprintln(p.w, "debootstrap:", msg)
		return
	}
	if verb != p.verb {
		p.flush()
		p.verb = verb
	}
	p.count++
	if p.count%50 == 0 {
		fmt.Fprintf(p.w, "debootstrap: %s: %d packages...\n", strings.ToLower(verb), p.count)
	}
}

func (p *debootstrapProgress) flush() {
	if p.verb != "" && p.count%50 != 0 {
		fmt.Fprintf(p.w, "debootstrap: %s: %d packages\n", strings.ToLower(p.verb), p.count)
	}
	p.verb, p.count = "", 0
}

// aptScript upgrades a Debian tree; it runs inside the image's own sandbox.
const aptScript = `set -e
apt-get update
apt-get -y -o Dpkg::Options::=--force-confold dist-upgrade
apt-get clean`

// aptUpgrade runs aptScript in a sandbox with network "bridge" on the build
// tree. The launcher mounts a resolv.conf naming the host's DNS servers
// over the image's (which may name a resolver of the machine that built
// it), so the image's own is neither used nor changed.
func aptUpgrade(ctx context.Context, l sandbox.Launcher, hold func(string) (string, func(), error), env *buildEnv, from Snapshot) error {
	runID := "image-update-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	if hold != nil {
		key, release, err := hold(runID)
		if err != nil {
			return env.fail("hold the update sandbox", err)
		}
		defer release()
		runID = key
	}
	fmt.Fprintf(env.progress, "apt-get dist-upgrade of %s in sandbox %s\n", from.Ref(), runID)
	fmt.Fprintf(env.log, "## apt-get dist-upgrade in sandbox %s\n", runID)
	p := &aptProgress{w: env.progress}
	sb, err := l.Start(ctx, sandbox.Spec{
		RunID:    runID,
		Root:     env.root,
		Arch:     from.Arch,
		Args:     []string{"/bin/sh", "-c", aptScript},
		Env:      []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "DEBIAN_FRONTEND=noninteractive"},
		Cwd:      "/",
		Hostname: "kiln-image-update",
		Resources: sandbox.Resources{
			Network: sandbox.NetworkBridge,
		},
		Console: io.MultiWriter(env.log, &lineWriter{fn: p.line}),
	})
	if err != nil {
		return env.fail("start the update sandbox", err)
	}
	defer func() { _ = sb.Delete(context.WithoutCancel(ctx)) }()
	exit, err := sb.Wait(ctx)
	if err != nil {
		_ = sb.Kill(context.WithoutCancel(ctx))
		return env.fail("apt-get dist-upgrade", err)
	}
	if exit.Code != 0 {
		return env.fail("apt-get dist-upgrade", fmt.Errorf("exit code %d %s", exit.Code, exit.Signal))
	}
	return nil
}

// aptProgress shows apt's summary lines, not one line per package.
type aptProgress struct{ w io.Writer }

func (p *aptProgress) line(l string) {
	switch {
	case strings.HasPrefix(l, "Fetched "), strings.Contains(l, " upgraded, "), strings.HasPrefix(l, "E: "), strings.HasPrefix(l, "W: "):
		fmt.Fprintln(p.w, "apt:", l)
	}
}
