package linux

import (
	"context"
	"fmt"
	"io"
	"path/filepath"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/cio"
	"github.com/containerd/containerd/containers"
	cerrdefs "github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/oci"

	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/internal/cleanup"
	"github.com/kiln-build/kiln/linux/netcni"
	"github.com/kiln-build/kiln/sandbox"
)

// creation is one create under way: what its phases hand on to the next,
// and the undo of what they have made.
type creation struct {
	c      *Containerd
	id     string
	spec   sandbox.Spec // Root and Mounts name the idmapped copies once userns ran
	root   string       // the clone, as the caller gave it
	rt     runtimeProfile
	labels map[string]string
	net    *netcni.Attached   // the run's bridge network; nil: none
	att    *netcni.Attachment // net's Attachment; nil: none
	opts   []oci.SpecOpts     // the spec's changes beyond specOpts
	// existed is set when a container of this id was there already (a
	// crash's leftover): it keeps its network, id range and mounts, and
	// the caller reaps it.
	existed bool
	// mounted is the idmapped copies being made (see userns): waited for
	// before the task is created, or before create gives up.
	mounted <-chan error
	// settle lets go of the id range's record once the container exists
	// or failed to; nil when there is none to let go.
	settle func()
	// shimAddr and bundle are the shared shim the task is asked of (see
	// shimTask), generated the spec containerd's record gets.
	shimAddr, bundle string
	generated        *oci.Spec
	release          func() // gives the shared shim's group back
	viaInit          bool   // kiln-sandbox-init installs the seccomp profile
	ctr              containerd.Container
	task             sandboxTask
	undo             cleanup.Stack
}

// create makes the container and task of spec, its console wired to
// console: runc create is done and the init process waits for start (in
// runc's exec fifo, its args, env, cwd, user and hostname fixed). On error
// nothing is left behind, as for Start.
func (c *Containerd) create(ctx context.Context, spec sandbox.Spec, console io.Writer) (_ *containerdSandbox, retErr error) {
	rt, err := c.runtimeFor(spec)
	if err != nil {
		return nil, err
	}
	if _, err := specOpts(spec, nil, c.harden); err != nil {
		return nil, err
	}
	ctx = c.nsCtx(ctx)
	cr := &creation{c: c, id: containerPrefix + spec.RunID, spec: spec, root: spec.Root, rt: rt,
		labels: c.labels(map[string]string{LabelRun: spec.RunID, LabelServer: spec.Server})}
	defer func() {
		if retErr != nil {
			cr.undo.Run(ctx)
		}
	}()
	phases := []func(context.Context) error{cr.network, cr.isolate, cr.seccomp, cr.shim, cr.container, cr.newTask(console)}
	for _, phase := range phases {
		if err := phase(ctx); err != nil {
			return nil, err
		}
	}
	sb, err := cr.sandbox(ctx)
	if err != nil {
		return nil, err
	}
	cr.undo.Disarm()
	return sb, nil
}

// network sets up the run's bridge network, if it has one.
func (cr *creation) network(ctx context.Context) error {
	c := cr.c
	if cr.spec.Network.OrNone() != sandbox.NetworkBridge {
		return nil
	}
	a, err := c.net.Attach(ctx, cr.spec.RunID)
	if err != nil {
		return err
	}
	cr.net, cr.att = a, &a.Attachment
	cr.undo.Push(func(ctx context.Context) {
		if cr.existed {
			return
		}
		if err := a.Close(ctx); err != nil {
			c.log.Error("network cleanup after failed start", "run", cr.spec.RunID, "err", err)
		}
	})
	return nil
}

// isolate gives the sandbox what its runtime isolates it with beyond the
// spec: a user namespace with idmapped copies of its root and writable
// mounts and a sysfs of its network (runc), or a check of the network's
// namespace (gVisor); and has the host write the network's sysctls.
func (cr *creation) isolate(ctx context.Context) error {
	if cr.rt.checkNetns && cr.att != nil {
		if err := notHostNetns(cr.att.NetNS); err != nil {
			return err
		}
	}
	if cr.rt.userns {
		if err := cr.userns(ctx); err != nil {
			return err
		}
	}
	if cr.rt.hostSysctls {
		cr.opts = append(cr.opts, withHostNetSysctls)
	}
	return nil
}

// userns sets up the sandbox's user namespace (see Containerd.userns) and
// starts making its idmapped copies, which run while containerd records
// the container.
func (cr *creation) userns(ctx context.Context) error {
	c := cr.c
	mount, undo, settled, err := c.userns(ctx, cr.id, &cr.spec, cr.labels)
	if err != nil {
		return err
	}
	cr.undo.Push(func(context.Context) {
		// Not ours: an existing container keeps its range and mounts.
		if !cr.existed {
			undo()
		}
	})
	// Once the container exists (or failed to), its record is either
	// backed by it or removed by undo, which never runs before the mounts
	// are done.
	cr.settle = func() {
		if cr.mounted != nil {
			// Waited for, not returned: this start failed already.
			if err := <-cr.mounted; err != nil {
				c.log.Debug("idmapped mounts of a failed start", "container", cr.id, "err", err)
			}
		}
		settled()
	}
	cr.undo.Push(func(context.Context) { cr.settleRange() })
	base := usernsOf(cr.labels)
	sys := "/sys"
	if cr.att != nil {
		// Mounted in the idmap directory, so it goes with the rest.
		sys = filepath.Join(cr.labels[LabelIDMaps], "sys")
		if err := mountNetnsSysfs(cr.att.NetNS, sys); err != nil {
			return err
		}
	}
	cr.opts = append(cr.opts, oci.WithUserNamespace(idMapping(base), idMapping(base)), withSysBind(sys))
	ch := make(chan error, 1)
	go func() { ch <- mount() }()
	cr.mounted = ch
	return nil
}

// settleRange lets go of the id range's record, once.
func (cr *creation) settleRange() {
	if cr.settle != nil {
		cr.settle()
		cr.settle = nil
	}
}

// seccomp has kiln-sandbox-init install the seccomp profile, when the
// runtime lets it and the filters are compiled.
func (cr *creation) seccomp(context.Context) error {
	cr.viaInit = cr.c.filters != nil && cr.rt.seccompInit
	p := personalityOf(cr.spec)
	if cr.viaInit {
		// Last of the spec's changes to the profile or the args.
		cr.opts = append(cr.opts, cr.c.filters.opt(p))
	} else if p.flags != 0 {
		p.notApplied("this sandbox does not start with it")
	}
	return nil
}

// shim puts the sandbox on a shared shim, when there are any and the
// runtime runs on them: its task is then asked of the shim directly (see
// shimTask), from the spec containerd's record gets.
func (cr *creation) shim(ctx context.Context) error {
	c := cr.c
	if c.shims == nil || !cr.rt.sharedShim {
		return nil
	}
	group, addr, rel, err := c.shims.acquire(ctx)
	if err != nil {
		return err
	}
	cr.release = rel
	cr.undo.Push(func(context.Context) { rel() })
	cr.shimAddr, cr.bundle = addr, c.shimBundle(cr.id)
	cr.labels[LabelShimAddress], cr.labels[LabelBundle] = cr.shimAddr, cr.bundle
	cr.opts = append(cr.opts, oci.WithAnnotations(map[string]string{shimGroupAnnotation: group}),
		func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
			cr.generated = s
			return nil
		})
	return nil
}

// container has containerd record the container, its spec built, and
// waits for the idmapped copies the spec names.
func (cr *creation) container(ctx context.Context) error {
	c := cr.c
	opts, err := specOpts(cr.spec, cr.att, c.harden)
	if err != nil {
		return err
	}
	opts = append(opts, cr.opts...)
	ctr, err := c.client.NewContainer(ctx, cr.id,
		containerd.WithContainerLabels(cr.labels),
		cr.rt.runtime(c.client, cr.att != nil),
		containerd.WithNewSpec(opts...))
	if err != nil {
		if cerrdefs.IsAlreadyExists(err) {
			cr.existed = true
			return fmt.Errorf("container %s: %w", cr.id, errdefs.ErrExists)
		}
		return fmt.Errorf("create container %s: %w", cr.id, err)
	}
	cr.undo.Push(func(ctx context.Context) {
		if cr.task != nil {
			// Through this task value, so its console fifos are closed.
			if err := cr.task.Delete(ctx, false); err != nil {
				c.log.Error("cleanup after failed start", "container", cr.id, "err", err)
			}
		}
		if err := deleteContainer(ctx, c.client, ctr, c.undoUserns); err != nil {
			c.log.Error("cleanup after failed start", "container", cr.id, "err", err)
		}
	})
	cr.ctr = ctr
	if cr.mounted != nil {
		err := <-cr.mounted
		cr.mounted = nil
		return err
	}
	return nil
}

// newTask creates the container's task, its console wired to console.
func (cr *creation) newTask(console io.Writer) func(context.Context) error {
	return func(ctx context.Context) error {
		c, id := cr.c, cr.id
		if console == nil {
			console = io.Discard
		}
		if cr.shimAddr != "" {
			st, err := newShimTask(ctx, id, cr.shimAddr, cr.bundle, cr.generated, console)
			if err != nil {
				return err
			}
			cr.task = st
			return nil
		}
		t, err := cr.ctr.NewTask(ctx, cio.NewCreator(cio.WithStreams(nil, console, console)))
		if cerrdefs.IsAlreadyExists(err) {
			// A task of this id outlived its container (left by a kiln
			// older than removeTask); with the container back it can go.
			c.log.Warn("deleting a stale task left without its container", "container", id)
			if rerr := removeTask(ctx, c.client, id); rerr != nil {
				return fmt.Errorf("create task %s: %w (and %w)", id, err, rerr)
			}
			t, err = cr.ctr.NewTask(ctx, cio.NewCreator(cio.WithStreams(nil, console, console)))
		}
		if err != nil {
			return fmt.Errorf("create task %s: %w", id, err)
		}
		cr.task = containerdTask{client: c.client, task: t}
		return nil
	}
}

// sandbox follows the created task: the wait outlives create's ctx, as
// long as the sandbox, and is set up before the start so that no exit can
// be missed. The id range's record is let go: the container exists.
func (cr *creation) sandbox(ctx context.Context) (*containerdSandbox, error) {
	life, stop := context.WithCancel(context.WithoutCancel(ctx))
	statusC, err := cr.task.Wait(life)
	if err != nil {
		stop()
		return nil, fmt.Errorf("wait task %s: %w", cr.id, err)
	}
	cr.settleRange()
	sb := &containerdSandbox{c: cr.c, ctr: cr.ctr, labels: cr.labels, task: cr.task, stop: stop, release: cr.release, net: cr.net,
		statusC: statusC, done: make(chan struct{})}
	if cr.viaInit {
		sb.initMountpoint = filepath.Join(cr.root, sandboxInitMount)
	}
	return sb, nil
}
