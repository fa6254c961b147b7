package scheduler

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/scheduler/queue"
	"github.com/kiln-build/kiln/scheduler/web"
)

// webBackend serves the web view (package web) through the same queries
// as the API. Every read goes through reader, every write through writer.
type webBackend struct {
	s      *Server
	public *principal // the reader of a public server (kindPublic)
}

// viewer is a web.Viewer: a client or admin principal, or nil for the
// anonymous reader of a public server.
type viewer struct{ p *principal }

func (v *viewer) Name() string {
	switch {
	case v.p == nil:
		return ""
	case v.p.kind == kindAdmin:
		return "admin"
	}
	return v.p.name
}
func (v *viewer) Anonymous() bool { return v.p == nil }
func (v *viewer) Admin() bool     { return v.p != nil && v.p.kind == kindAdmin }
func (v *viewer) MayChange(owner string) bool {
	return v.p != nil && (v.p.kind == kindAdmin || v.p.kind == kindClient) && v.p.sees(owner)
}

func principalOf(v web.Viewer) *principal {
	if vv, ok := v.(*viewer); ok {
		return vv.p
	}
	return nil
}

// reader is the one place the web view decides what a viewer reads: the
// principal whose ownership rules every page and feed applies, through the
// same queries as the API. A public server ([ui] public) shows every job
// to everyone, anonymous or logged in (a login adds writes, not reads);
// otherwise a token reads in the web view what it reads through the API.
func (b *webBackend) reader(v web.Viewer) (*principal, error) {
	p := principalOf(v)
	if b.s.cfg.UI.Public && (p == nil || p.kind == kindClient) {
		return b.public, nil
	}
	if p == nil {
		return nil, errorf(http.StatusUnauthorized, api.CodeUnauthorized, "log in with a client or admin token")
	}
	return p, nil
}

// writer is the principal a write from the web view is made as: a client
// or admin token, whose ownership the write then checks as the API does.
func writer(v web.Viewer) (*principal, error) {
	p := principalOf(v)
	if p == nil || (p.kind != kindAdmin && p.kind != kindClient) {
		return nil, errorf(http.StatusForbidden, api.CodeForbidden, "log in with a client or admin token to do this")
	}
	return p, nil
}

func (b *webBackend) Authenticate(ctx context.Context, token string) (web.Viewer, error) {
	r, _ := http.NewRequestWithContext(ctx, http.MethodGet, "/", nil)
	r.Header.Set("Authorization", "Bearer "+token)
	p, err := b.s.authenticate(ctx, r)
	if err != nil {
		return nil, err
	}
	if p.kind != kindAdmin && p.kind != kindClient {
		return nil, errorf(http.StatusUnauthorized, api.CodeUnauthorized, "a %s token cannot log in; use a client or admin token", p.kind)
	}
	return &viewer{p: p}, nil
}

func (b *webBackend) Anonymous() web.Viewer { return &viewer{} }

func (b *webBackend) Throttle(v web.Viewer) time.Duration {
	p := principalOf(v)
	if p == nil {
		return 0
	}
	d := b.s.limitFor(p).wait(p.hash, b.s.now())
	if d > 0 {
		b.s.metrics.rateLimited.Inc()
	}
	return d
}

func (b *webBackend) Runs(ctx context.Context, v web.Viewer, q web.RunQuery) ([]api.Run, error) {
	p, err := b.reader(v)
	if err != nil {
		return nil, err
	}
	rq := runQuery{job: q.Job, host: q.Host, states: q.States, limit: q.Limit, owner: p.ownerFilter()}
	if q.Group != "" {
		if rq.group, err = strconv.ParseInt(q.Group, 10, 64); err != nil || rq.group <= 0 {
			return nil, notFound("no group %q", q.Group)
		}
	}
	if q.Before != "" {
		if rq.before, err = parseRunID(q.Before); err != nil {
			return nil, badRequest("before %q: want a run ID", q.Before)
		}
	}
	return b.s.st.runs(ctx, rq)
}

// run reads a run the viewer may see; one it may not is not found.
func (b *webBackend) run(ctx context.Context, v web.Viewer, id string) (*api.Run, int64, error) {
	n, err := parseRunID(id)
	if err != nil {
		return nil, 0, err
	}
	p, err := b.reader(v)
	if err != nil {
		return nil, 0, err
	}
	if err := b.s.visibleRun(ctx, p, n); err != nil {
		return nil, 0, err
	}
	r, err := b.s.getRun(ctx, n)
	return r, n, err
}

func (b *webBackend) Run(ctx context.Context, v web.Viewer, id string) (*api.Run, error) {
	r, _, err := b.run(ctx, v, id)
	return r, err
}

func (b *webBackend) ReadLog(ctx context.Context, v web.Viewer, id string, attempt int, offset int64, limit int, wait time.Duration) (*web.LogChunk, error) {
	_, n, err := b.run(ctx, v, id)
	if err != nil {
		return nil, err
	}
	lr, err := b.s.readLog(ctx, n, attempt, offset, min(limit, maxLogRead), min(wait, time.Duration(b.s.cfg.MaxLeaseWait)))
	if err != nil {
		return nil, err
	}
	return &web.LogChunk{Data: lr.data, Attempt: lr.attempt, Size: lr.size, State: lr.state, RunAttempt: lr.runAttempt, Truncated: lr.truncated}, nil
}

func (b *webBackend) ScanLog(ctx context.Context, v web.Viewer, id string, attempt int, offset int64, fn func([]byte) error) error {
	_, n, err := b.run(ctx, v, id)
	if err != nil {
		return err
	}
	// The size bounds the scan to what was stored when it began, so a live
	// run's appends do not make it chase the end.
	lr, err := b.s.readLogOnce(ctx, n, attempt, offset, 0)
	if err != nil {
		return err
	}
	return b.s.st.logChunks(ctx, n, lr.attempt, offset, lr.size, func(off int64, data []byte) (bool, error) {
		start := off
		if off < offset {
			data, start = data[offset-off:], offset
		}
		if start+int64(len(data)) > lr.size {
			data = data[:lr.size-start]
		}
		return true, fn(data)
	})
}

func (b *webBackend) Jobs(ctx context.Context, v web.Viewer) ([]api.JobInfo, error) {
	p, err := b.reader(v)
	if err != nil {
		return nil, err
	}
	return b.s.listJobs(ctx, p)
}

func (b *webBackend) Job(ctx context.Context, v web.Viewer, name string) (*api.JobInfo, error) {
	p, err := b.reader(v)
	if err != nil {
		return nil, err
	}
	return b.s.getJob(ctx, p, name)
}

// Revisions are those of the job's current incarnation only: the
// revisions of a removed job of the same name, maybe another owner's, are
// not this job's. The owner the viewer was allowed to see is checked again
// in the query, so a job removed and added again meanwhile shows nothing.
func (b *webBackend) Revisions(ctx context.Context, v web.Viewer, name string) ([]web.Revision, error) {
	ji, err := b.Job(ctx, v, name)
	if err != nil {
		return nil, err
	}
	revs, err := b.s.st.revisions(ctx, name, ji.Owner)
	if err != nil {
		return nil, err
	}
	var out []web.Revision
	for _, r := range revs {
		j, err := b.s.jobSpecFrom(name, r.rev, r.spec)
		if err != nil {
			return nil, err
		}
		out = append(out, web.Revision{Revision: r.rev, Created: r.created, Job: *j})
	}
	if len(out) == 0 {
		return nil, notFound("no job %q", name)
	}
	return out, nil
}

// JobStats counts the ended runs of the job's current incarnation.
func (b *webBackend) JobStats(ctx context.Context, v web.Viewer, name string) (web.JobStats, error) {
	var st web.JobStats
	ji, err := b.Job(ctx, v, name)
	if err != nil {
		return st, err
	}
	st.Ended, st.Succeeded, err = b.s.st.jobStats(ctx, name, ji.Owner)
	return st, err
}

func (b *webBackend) Hosts(ctx context.Context, v web.Viewer) ([]api.Host, error) {
	if !v.Admin() {
		return nil, errorf(http.StatusForbidden, api.CodeForbidden, "hosts are shown to an admin token only")
	}
	hs, err := b.s.listHosts(ctx, "")
	if err != nil {
		return nil, err
	}
	return hs, b.s.fillKeyIDs(ctx, hs)
}

func (b *webBackend) Group(ctx context.Context, v web.Viewer, id string) (*api.Group, error) {
	grp, err := strconv.ParseInt(id, 10, 64)
	if err != nil || grp <= 0 {
		return nil, notFound("no group %q", id)
	}
	p, err := b.reader(v)
	if err != nil {
		return nil, err
	}
	if err := b.s.visibleGroup(ctx, p, grp); err != nil {
		return nil, err
	}
	return b.s.getGroup(ctx, grp)
}

func (b *webBackend) FindArtifacts(ctx context.Context, v web.Viewer, sha string) ([]api.ArtifactRef, error) {
	if !api.ValidSHA256(sha) {
		return nil, badRequest("sha256 %q: want 64 lowercase hex digits", sha)
	}
	p, err := b.reader(v)
	if err != nil {
		return nil, err
	}
	return b.s.st.findArtifacts(ctx, p.ownerFilter(), sha)
}

func (b *webBackend) Attestation(ctx context.Context, v web.Viewer, id string) (string, []byte, error) {
	_, n, err := b.run(ctx, v, id)
	if err != nil {
		return "", nil, err
	}
	return b.s.st.runAttestation(ctx, n)
}

func (b *webBackend) OpenArtifact(ctx context.Context, v web.Viewer, run, path string) (io.ReadSeekCloser, *api.Artifact, error) {
	r, _, err := b.run(ctx, v, run)
	if err != nil {
		return nil, nil, err
	}
	for i, a := range r.Artifacts {
		if a.Path == path {
			f, err := b.s.blobs.Open(a.SHA256)
			if err != nil {
				return nil, nil, fmt.Errorf("artifact %s of run %s: %w", path, run, err)
			}
			return f, &r.Artifacts[i], nil
		}
	}
	return nil, nil, notFound("run %s has no artifact %q", run, path)
}

func (b *webBackend) CancelRun(ctx context.Context, v web.Viewer, id string) error {
	p, err := writer(v)
	if err != nil {
		return err
	}
	n, err := parseRunID(id)
	if err != nil {
		return err
	}
	if err := b.s.visibleRun(ctx, p, n); err != nil {
		return err
	}
	_, err = b.s.cancelRun(ctx, n)
	return err
}

func (b *webBackend) ExecuteJob(ctx context.Context, v web.Viewer, name string) (*api.Run, error) {
	p, err := writer(v)
	if err != nil {
		return nil, err
	}
	return b.s.execute(ctx, p, name, api.ExecuteRequest{})
}

func (b *webBackend) DrainHost(ctx context.Context, v web.Viewer, name string) error {
	if !v.Admin() {
		return errorf(http.StatusForbidden, api.CodeForbidden, "draining a host needs an admin token")
	}
	_, err := b.s.drainHost(ctx, name)
	return err
}

// WaitReason explains a queued run's wait from the hosts' last reported
// facts, with the dispatcher's own test (mismatch), narrowing the hosts
// step by step so the answer names the first requirement no host meets.
func (b *webBackend) WaitReason(ctx context.Context, v web.Viewer, r *api.Run) (string, error) {
	if r.State == api.StateDepWait {
		return r.Waiting, nil
	}
	if r.State != api.StateQueued {
		return "", nil
	}
	hosts, err := b.s.listHosts(ctx, "")
	if err != nil {
		return "", err
	}
	var live []api.Host
	for _, h := range hosts {
		if !h.Drained {
			live = append(live, h)
		}
	}
	switch {
	case len(hosts) == 0:
		return "no host is enrolled", nil
	case len(live) == 0:
		return "every enrolled host is drained", nil
	}
	if r.Kind == api.KindDiffoscope {
		for _, h := range live {
			if h.Facts.HasPostHook(api.DiffoscopeHook) {
				return fmt.Sprintf("waiting for a free slot on a host with a %q post hook", api.DiffoscopeHook), nil
			}
		}
		return fmt.Sprintf("no host defines a %q post hook to compare the members", api.DiffoscopeHook), nil
	}
	j, err := b.s.jobSpec(ctx, r.Job, r.Revision)
	if err != nil {
		return "", err
	}
	pin, err := b.s.pinned(ctx, r.Image)
	if err != nil {
		return "", err
	}
	worst := queue.FitOK
	fitting := 0
	free := false
	over := "" // what a host's maximum refuses, for queue.FitLimit
	for _, h := range live {
		m := queue.MismatchImage(j, pin, &h.Facts)
		if m == queue.FitLimit && over == "" {
			over = j.Asked().Over(h.Facts.Limits)
		}
		if m == queue.FitOK {
			fitting++
			free = free || h.Facts.FreeSlots > 0
		} else if m > worst {
			worst = m // the furthest any host got: the closest miss
		}
	}
	if fitting == 0 {
		switch worst {
		case queue.FitOS:
			return fmt.Sprintf("no live host runs %s", j.Constraints.OS), nil
		case queue.FitArch:
			return fmt.Sprintf("no live host runs arch %s, natively or emulated", j.Arch), nil
		case queue.FitNetwork:
			return fmt.Sprintf("no live host offers the network the job asks for (%s)", j.Resources.Network.Mode()), nil
		case queue.FitIsolation:
			return fmt.Sprintf("no live host runs isolation %q", j.Isolation), nil
		case queue.FitCache:
			return fmt.Sprintf("no live host has every cache the job names (%s)", strings.Join(j.Caches, ", ")), nil
		case queue.FitImage:
			return fmt.Sprintf("no live host with that platform has image %s", j.Image), nil
		case queue.FitLabel:
			return fmt.Sprintf("no live host with the image has the labels %s", queue.LabelText(j.Constraints.Labels)), nil
		case queue.FitLimit:
			return "no live host allows " + over, nil
		}
	}
	if id, err := parseRunID(r.ID); err == nil {
		owner, err := b.s.st.runOwner(ctx, id)
		if err != nil {
			return "", err
		}
		why, err := b.s.queueWait(ctx, id, owner)
		if err != nil {
			return "", err
		}
		if why != "" {
			return why, nil
		}
	}
	if !free {
		return fmt.Sprintf("every host that can run it (%d) is busy: all its slots are taken", fitting), nil
	}
	if r.Group != "" {
		return "waiting for a host that holds no other member of its reproduce group (up to reproduce_wait)", nil
	}
	return "a host that can run it has a free slot; it is leased at that host's next poll", nil
}
