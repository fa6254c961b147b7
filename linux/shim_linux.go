package linux

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/cio"
	cerrdefs "github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/kiln-build/kiln/internal/flock"
)

// shimGroupAnnotation makes containerd's runc v2 shim serve every
// container carrying the same value from one shim daemon, instead of
// starting a daemon for every container. containerd would still run a
// short `shim start` process per container to find the group's socket,
// and a `shim delete` after each; kiln's sandboxes skip both by asking
// the group's shim for their tasks directly (shimTask), and only anchors
// are made through containerd.
const shimGroupAnnotation = "io.containerd.runc.v2.group"

// LabelShimAnchor marks the idle containers that keep shared shims alive.
// They carry no LabelRun, so nothing that reaps runs touches them.
const LabelShimAnchor = "kiln.shim-anchor"

// anchorPrefix starts the names of anchors; it does not start with
// containerPrefix.
const anchorPrefix = "kiln.shim-"

// shimGroups hands each sandbox a shim group no other live sandbox uses,
// making a new group when all are taken. Exclusive use matters: the runc
// shim holds one lock across a whole `runc create` that every other call on
// the same shim (start, kill, state, delete) also takes, so sandboxes
// sharing a shim wait on each other's creates. A group is reused one
// sandbox after another, which is where the saving is.
//
// Each group is kept alive by an anchor: a container left in the "created"
// state (runc init waiting to exec; no CPU) for as long as the host runs
// kiln. Without it, a group shim exits with its last container, and a
// container starting at that moment finds the shim's socket and then loses
// it ("failed to start shim: dial unix ...: no such file").
//
// Anchors are named kiln.shim-<hash of dir and owner>-<n> and labelled
// with their owner (the data dir's identity) and its path: the kiln
// processes of one data dir (a worker; execs) share them and coordinate
// through lock files in dir, while another data dir on the same containerd
// namespace has its own and never touches these.
type shimGroups struct {
	dir    string // anchors' root directories live under dir
	prefix string // anchorPrefix + hash of dir + "-"
	max    int    // past this many groups, sandboxes share the least used
	client *containerd.Client
	labels map[string]string // of every anchor: LabelShimAnchor and the owner's

	mu      sync.Mutex
	anchors []*shimAnchor
	users   []int // live sandboxes per group, parallel to anchors
}

func newShimGroups(dir string, client *containerd.Client, labels map[string]string) *shimGroups {
	// The owner too: a data dir removed and made anew at the same path is
	// another owner, whose anchors must not collide with the old one's
	// (those are `kiln host gc`'s to remove).
	sum := sha256.Sum256([]byte(dir + "\x00" + labels[LabelOwner]))
	return &shimGroups{
		dir:    dir,
		prefix: anchorPrefix + hex.EncodeToString(sum[:4]) + "-",
		max:    max(8, 4*runtime.NumCPU()),
		client: client,
		labels: labels,
	}
}

// grow adds a group (its anchor is made on first use); g.mu is held.
func (g *shimGroups) grow() {
	id := g.prefix + strconv.Itoa(len(g.anchors))
	g.anchors = append(g.anchors, &shimAnchor{id: id, root: filepath.Join(g.dir, id), labels: g.labels})
	g.users = append(g.users, 0)
}

// prepare makes sure groups 0..n-1 exist with live anchors, so that the
// first runs do not each pay for making one.
func (g *shimGroups) prepare(ctx context.Context, n int) error {
	var held []func()
	defer func() {
		for _, release := range held {
			release()
		}
	}()
	for i := 0; i < min(n, g.max); i++ {
		_, _, release, err := g.acquire(ctx)
		if err != nil {
			return err
		}
		held = append(held, release)
	}
	return nil
}

// hold marks group as used by a sandbox found alive (reattached after a
// restart), so no new sandbox is put on its shim; release as for acquire.
// A group that is not one of kiln's needs no release.
func (g *shimGroups) hold(group string) (release func()) {
	n, err := strconv.Atoi(strings.TrimPrefix(group, g.prefix))
	if err != nil || !strings.HasPrefix(group, g.prefix) || n < 0 || n >= g.max {
		return func() {}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for len(g.anchors) <= n {
		g.grow()
	}
	g.users[n]++
	return g.releaser(n)
}

// releaser gives back one use of group n, once however often it is called.
func (g *shimGroups) releaser(n int) func() {
	return sync.OnceFunc(func() {
		g.mu.Lock()
		g.users[n]--
		g.mu.Unlock()
	})
}

// acquire returns the group (its annotation value) for a new sandbox, the
// address of the group's shim, and the function that gives the group back
// once the sandbox is deleted; calling release more than once is harmless.
// ctx (namespaced) bounds checking or creating the anchor.
func (g *shimGroups) acquire(ctx context.Context) (group, address string, release func(), err error) {
	g.mu.Lock()
	pick := -1
	for i, n := range g.users {
		if n == 0 {
			pick = i
			break
		}
	}
	if pick < 0 && len(g.anchors) < g.max {
		g.grow()
		pick = len(g.anchors) - 1
	}
	if pick < 0 {
		pick = 0
		for i, n := range g.users {
			if n < g.users[pick] {
				pick = i
			}
		}
	}
	g.users[pick]++
	a := g.anchors[pick]
	g.mu.Unlock()
	release = g.releaser(pick)
	address, err = a.ensure(ctx, g.client)
	if err != nil {
		release()
		return "", "", nil, err
	}
	return a.id, address, release, nil
}

// shimAnchor is one group's anchor container.
type shimAnchor struct {
	id     string // container ID, also the group's annotation value
	root   string // root directory of the anchor container
	labels map[string]string

	mu      sync.Mutex
	task    containerd.Task // nil until checked
	address string          // of the shim serving task
}

// ensure makes sure the anchor's task exists in the "created" state,
// creating it, or re-creating it after its shim died, if needed, and
// returns the address of its shim. Safe for concurrent use; a single
// status call when the anchor is fine.
func (a *shimAnchor) ensure(ctx context.Context, client *containerd.Client) (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.task != nil {
		if st, err := a.task.Status(ctx); err == nil && st.Status == containerd.Created {
			return a.address, nil
		}
		a.task = nil
	}
	if err := a.make(ctx, client); err != nil {
		return "", err
	}
	addr, err := shimAddress(a.task.Pid())
	if err != nil {
		a.task = nil
		return "", fmt.Errorf("shim anchor %s: %w", a.id, err)
	}
	a.address = addr
	return addr, nil
}

// make sets a.task to the anchor's task, reused or made anew; a.mu is
// held.
func (a *shimAnchor) make(ctx context.Context, client *containerd.Client) error {
	// Another kiln process on this host (exec beside the worker) may be
	// checking or making the same anchor.
	if err := os.MkdirAll(a.root, 0o755); err != nil {
		return fmt.Errorf("shim anchor: %w", err)
	}
	lock, err := flock.Wait(a.root+".lock", 0o600)
	if err != nil {
		return fmt.Errorf("shim anchor: %w", err)
	}
	defer lock.Close()
	ctr, err := client.LoadContainer(ctx, a.id)
	switch {
	case cerrdefs.IsNotFound(err):
	case err != nil:
		return fmt.Errorf("load %s: %w", a.id, err)
	default:
		// Left by an earlier kiln process: reuse it if it is intact and
		// carries today's labels (gc goes by them).
		if lbl, err := ctr.Labels(ctx); err == nil && lbl[LabelOwner] == a.labels[LabelOwner] {
			if task, err := ctr.Task(ctx, nil); err == nil {
				if st, err := task.Status(ctx); err == nil && st.Status == containerd.Created {
					a.task = task
					return nil
				}
			}
		}
		if err := deleteContainer(ctx, client, ctr, nil); err != nil {
			return err
		}
	}
	// runc checks that the init command exists before it waits to exec it;
	// the kiln binary, mounted read-only, surely does. It never runs.
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("shim anchor: %w", err)
	}
	ctr, err = client.NewContainer(ctx, a.id,
		containerd.WithContainerLabels(a.labels),
		containerd.WithRuntime(client.Runtime(), nil),
		containerd.WithNewSpec(
			oci.WithDefaultSpec(),
			oci.WithRootFSPath(a.root),
			oci.WithProcessArgs("/anchor"),
			oci.WithMounts([]specs.Mount{{Destination: "/anchor", Type: "bind", Source: exe, Options: []string{"rbind", "ro"}}}),
			oci.WithAnnotations(map[string]string{shimGroupAnnotation: a.id}),
		))
	if err != nil {
		return fmt.Errorf("create %s: %w", a.id, err)
	}
	task, err := ctr.NewTask(ctx, cio.NullIO)
	if err != nil {
		_ = ctr.Delete(context.WithoutCancel(ctx))
		return fmt.Errorf("create task %s: %w", a.id, err)
	}
	a.task = task
	return nil
}
