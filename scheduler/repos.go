package scheduler

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/aptrepo"
	"github.com/kiln-build/kiln/names"
)

// Package repositories (docs/publishing.md). The server keeps each
// repository's signing key, its packages and its index sets; every file a
// reader gets is a blob. Publishing writes the new index set's files as
// blobs first, then switches the repository to them in one transaction
// (store_repos.go commitPublication): a reader, and a server killed at any
// point, sees the old set or the new one.

// maxPublishRetries bounds the retries of a publish that met another
// replica's (errGenerationMoved).
const maxPublishRetries = 8

// repoMu serializes the publishes of one repository within this server;
// replicas meet in commitPublication's generation check.
func (s *Server) repoMu(name string) *sync.Mutex {
	m, _ := s.repoLocks.LoadOrStore(name, &sync.Mutex{})
	return m.(*sync.Mutex)
}

// putRepoBlob stores data in the blob store (fsynced, renamed) and
// returns its sha256.
func (s *Server) putRepoBlob(ctx context.Context, data []byte) (string, error) {
	sum := sha256.Sum256(data)
	sha := hex.EncodeToString(sum[:])
	if _, _, err := s.blobs.Write(ctx, sha, "repo", 0, int64(len(data)), bytes.NewReader(data), false); err != nil {
		return "", fmt.Errorf("storing index file: %w", err)
	}
	return sha, nil
}

// buildIndex writes and signs the index set of r holding entries, stores
// its files as blobs and returns them.
func (s *Server) buildIndex(ctx context.Context, r *storedRepo, entries []repoEntry, now time.Time) ([]repoFile, error) {
	key, err := aptrepo.ParseKey([]byte(r.privateKey))
	if err != nil {
		return nil, err
	}
	es := make([]aptrepo.Entry, 0, len(entries))
	for _, e := range entries {
		var p aptrepo.Package
		if err := json.Unmarshal([]byte(e.control), &p); err != nil {
			return nil, fmt.Errorf("package %s %s: %w", e.Name, e.Version, err)
		}
		es = append(es, aptrepo.Entry{Package: &p, Component: e.Component, Filename: e.Filename, Size: e.Size, SHA256: e.SHA256})
	}
	files, err := aptrepo.Index(aptrepo.Repo{Name: r.Name, Suite: r.Suite, Components: r.Components, Arches: r.Arches}, es, now)
	if err != nil {
		return nil, err
	}
	release := files[len(files)-1]
	in, det, err := key.Sign(release.Data, now)
	if err != nil {
		return nil, err
	}
	dir := path.Dir(release.Path) + "/"
	files = append(files, aptrepo.File{Path: dir + "InRelease", Data: in}, aptrepo.File{Path: dir + "Release.gpg", Data: det})
	out := make([]repoFile, 0, len(files))
	for _, f := range files {
		sha, err := s.putRepoBlob(ctx, f.Data)
		if err != nil {
			return nil, err
		}
		out = append(out, repoFile{path: f.Path, sha256: sha, size: int64(len(f.Data))})
	}
	return out, nil
}

// createRepo makes a repository with its key (req.Key, or a new one) and
// publishes its first, empty, index set.
func (s *Server) createRepo(ctx context.Context, req *api.CreateRepoRequest) (*api.Repo, error) {
	if err := req.Validate(); err != nil {
		return nil, badRequest("%v", err)
	}
	now := s.now().UTC()
	var key *aptrepo.Key
	var err error
	if req.Key != "" {
		if key, err = aptrepo.ParseKey([]byte(req.Key)); err != nil {
			return nil, badRequest("key: %v", err)
		}
	} else if key, err = aptrepo.NewKey(req.Name, now); err != nil {
		return nil, err
	}
	priv, err := key.Private()
	if err != nil {
		return nil, err
	}
	pub, err := key.Public()
	if err != nil {
		return nil, err
	}
	r := &storedRepo{Repo: api.Repo{Name: req.Name, Type: req.Type, Suite: req.Suite, Components: req.Components, Arches: req.Arches,
		Public: req.Public, Publishers: req.Publishers, Fingerprint: key.Fingerprint(), Created: now, Generation: 1, Published: now},
		privateKey: string(priv), publicKey: string(pub)}
	files, err := s.buildIndex(ctx, r, nil, now)
	if err != nil {
		return nil, err
	}
	if err := s.st.createRepo(ctx, r, files, now); err != nil {
		return nil, err
	}
	s.log.Info("repository created", "repo", r.Name, "suite", r.Suite, "fingerprint", r.Fingerprint, "public", r.Public)
	return &r.Repo, nil
}

func (s *Server) showRepo(ctx context.Context, name string) (*api.Repo, error) {
	r, err := s.st.repo(ctx, name)
	if err != nil {
		return nil, err
	}
	es, err := s.st.repoPackages(ctx, name)
	if err != nil {
		return nil, err
	}
	r.Packages = []api.RepoPackage{}
	for _, e := range es {
		r.Packages = append(r.Packages, e.RepoPackage)
	}
	return &r.Repo, nil
}

// candidate is a package a run offers to a repository.
type candidate struct {
	pkg   *aptrepo.Package
	entry repoEntry
}

var extraNameRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9+.~_-]{0,199}$`)

// readCandidates reads the .deb artifacts of a run (and notes its
// .buildinfo and .changes files) for repository r's component.
func (s *Server) readCandidates(r *storedRepo, component string, runID int64, arts []api.Artifact) ([]candidate, []api.Artifact, error) {
	var cands []candidate
	var extras []api.Artifact
	for _, a := range arts {
		switch {
		case strings.HasSuffix(a.Path, ".deb"):
		case strings.HasSuffix(a.Path, ".buildinfo") || strings.HasSuffix(a.Path, ".changes"):
			extras = append(extras, a)
			continue
		default:
			continue
		}
		f, err := s.blobs.Open(a.SHA256)
		if err != nil {
			return nil, nil, fmt.Errorf("artifact %s: %w", a.Path, err)
		}
		p, err := aptrepo.ReadDeb(f, a.Size)
		f.Close()
		if err != nil {
			return nil, nil, fmt.Errorf("artifact %s: %w", a.Path, err)
		}
		if p.Arch != "all" && !slices.Contains(r.Arches, p.Arch) {
			return nil, nil, fmt.Errorf("%w: %s is for %s; the repository has %s", aptrepo.ErrBadPackage, a.Path, p.Arch, strings.Join(r.Arches, ", "))
		}
		ctl, _ := json.Marshal(p)
		cands = append(cands, candidate{pkg: p, entry: repoEntry{RepoPackage: api.RepoPackage{
			Name: p.Name, Version: p.Version, Arch: p.Arch, Component: component, Filename: p.PoolPath(component, ".deb"),
			Size: a.Size, SHA256: a.SHA256}, control: string(ctl), runID: runID}})
	}
	if len(cands) == 0 {
		return nil, nil, fmt.Errorf("%w: the run has no .deb artifact", aptrepo.ErrBadPackage)
	}
	return cands, extras, nil
}

func pkgID(name, version, arch string) string { return name + "_" + version + "_" + arch }

// publishRun adds the .deb artifacts (and .buildinfo/.changes) of run
// runID into repository repoName and publishes a new index set, unless
// every package is there with the same bytes. A package version there
// with other bytes refuses the whole run: a version's bytes never change
// under apt's feet. What became of it is recorded on the run, and
// returned.
func (s *Server) publishRun(ctx context.Context, pub *api.Publish, owner string, runID int64, arts []api.Artifact) api.Publication {
	now := s.now().UTC()
	rec := runPublication{Publication: api.Publication{Repo: pub.Repo, Run: itoa(runID), Time: now}, runID: runID}
	err := s.publishRunInto(ctx, pub, owner, &rec, arts, now)
	switch {
	case err == nil:
	case errors.Is(err, aptrepo.ErrBadPackage), errors.Is(err, errVersionTaken), errors.Is(err, errNotPublisher):
		rec.State, rec.Detail = api.PublishRefused, err.Error()
	default:
		rec.State, rec.Detail = api.PublishFailed, err.Error()
	}
	if err != nil {
		s.log.Warn("publication not done", "repo", pub.Repo, "run", runID, "state", rec.State, "err", err)
		if rerr := s.st.recordPublications(ctx, []runPublication{rec}); rerr != nil {
			s.log.Error("recording publication", "run", runID, "err", rerr)
		}
	} else {
		s.log.Info("run published", "repo", pub.Repo, "run", runID, "state", rec.State, "packages", rec.Packages)
	}
	s.publishDone(ctx, runID, rec.Publication)
	return rec.Publication
}

// errVersionTaken: a package version is in the repository with other
// bytes.
var errVersionTaken = errors.New("version published with other bytes")

// errNotPublisher: the job's owner is not among the repository's
// publishers.
var errNotPublisher = errors.New("not a publisher")

func (s *Server) publishRunInto(ctx context.Context, pub *api.Publish, owner string, rec *runPublication, arts []api.Artifact, now time.Time) error {
	mu := s.repoMu(pub.Repo)
	mu.Lock()
	defer mu.Unlock()
	for try := 0; ; try++ {
		r, err := s.st.repo(ctx, pub.Repo)
		if err != nil {
			return err
		}
		if owner != ownerAdmin && !slices.Contains(r.Publishers, owner) {
			return fmt.Errorf("%w: the job's owner %s may not publish into repository %q (its publishers: %s; kiln repo create --publishers)",
				errNotPublisher, owner, r.Name, strings.Join(append([]string{ownerAdmin}, r.Publishers...), ", "))
		}
		component := pub.Component
		if component == "" {
			component = r.Components[0]
		}
		if !slices.Contains(r.Components, component) {
			return fmt.Errorf("%w: component %q is not one of the repository's (%s)", aptrepo.ErrBadPackage, component, strings.Join(r.Components, ", "))
		}
		cands, extras, err := s.readCandidates(r, component, rec.runID, arts)
		if err != nil {
			return err
		}
		existing, err := s.st.repoPackages(ctx, r.Name)
		if err != nil {
			return err
		}
		byID := map[string]repoEntry{}
		byFile := map[string]repoEntry{}
		for _, e := range existing {
			byID[pkgID(e.Name, e.Version, e.Arch)] = e
			byFile[e.Filename] = e
		}
		p := &publication{repo: r.Name, generation: r.Generation, now: now, records: []runPublication{*rec}}
		rec.Packages = nil
		var taken []string
		for _, c := range cands {
			e := c.entry
			id := pkgID(e.Name, e.Version, e.Arch)
			rec.Packages = append(rec.Packages, id)
			old, ok := byID[id]
			if !ok {
				old, ok = byFile[e.Filename] // 1:1.0 and 1.0 share a pool file
			}
			switch {
			case ok && old.SHA256 == e.SHA256:
			case ok:
				taken = append(taken, fmt.Sprintf("%s %s %s is published with sha256 %s (run %s); this run's has sha256 %s", e.Name, e.Version, e.Arch, old.SHA256, old.Run, e.SHA256))
			default:
				p.add = append(p.add, e)
				p.pool = append(p.pool, repoFile{path: e.Filename, sha256: e.SHA256, size: e.Size})
				byID[id], byFile[e.Filename] = e, e
			}
		}
		if len(taken) > 0 {
			return fmt.Errorf("%w: %s", errVersionTaken, strings.Join(taken, "; "))
		}
		if len(p.add) == 0 {
			rec.State = api.PublishedUnchanged
			return s.st.recordPublications(ctx, []runPublication{*rec})
		}
		// .buildinfo and .changes lie next to the source's packages; an
		// older one of the same name stays (the packages are what is
		// immutable, these only describe a build of them).
		dir := path.Dir(p.add[0].Filename) + "/"
		for _, x := range extras {
			base := path.Base(x.Path)
			if !extraNameRe.MatchString(base) {
				continue
			}
			p.pool = append(p.pool, repoFile{path: dir + base, sha256: x.SHA256, size: x.Size})
		}
		all := slices.Collect(func(yield func(repoEntry) bool) {
			for _, e := range byID {
				if !yield(e) {
					return
				}
			}
		})
		if p.files, err = s.buildIndex(ctx, r, all, now); err != nil {
			return err
		}
		rec.State = api.PublishedNew
		p.records = []runPublication{*rec}
		err = s.st.commitPublication(ctx, p)
		if errors.Is(err, errGenerationMoved) && try < maxPublishRetries {
			continue
		}
		return err
	}
}

// removeRepoPackage takes a package version (every arch, or arch) out of
// a repository and publishes the index set without it.
func (s *Server) removeRepoPackage(ctx context.Context, repo, pkg, version, arch string) (*api.Repo, error) {
	mu := s.repoMu(repo)
	mu.Lock()
	defer mu.Unlock()
	for try := 0; ; try++ {
		r, err := s.st.repo(ctx, repo)
		if err != nil {
			return nil, err
		}
		existing, err := s.st.repoPackages(ctx, repo)
		if err != nil {
			return nil, err
		}
		now := s.now().UTC()
		p := &publication{repo: repo, generation: r.Generation, now: now}
		var kept []repoEntry
		for _, e := range existing {
			if e.Name == pkg && e.Version == version && (arch == "" || e.Arch == arch) {
				p.remove = append(p.remove, e.RepoPackage)
				continue
			}
			kept = append(kept, e)
		}
		if len(p.remove) == 0 {
			return nil, notFound("repository %q has no package %s %s%s", repo, pkg, version, map[bool]string{true: "", false: " " + arch}[arch == ""])
		}
		if p.files, err = s.buildIndex(ctx, r, kept, now); err != nil {
			return nil, err
		}
		err = s.st.commitPublication(ctx, p)
		if errors.Is(err, errGenerationMoved) && try < maxPublishRetries {
			continue
		}
		if err != nil {
			return nil, err
		}
		s.log.Info("package removed from repository", "repo", repo, "package", pkg, "version", version, "arch", arch)
		return s.showRepo(ctx, repo)
	}
}

// publishAfterRun publishes a succeeded run's packages when its job says
// [publish] when = "success".
func (s *Server) publishAfterRun(ctx context.Context, run *api.Run) {
	if run.State != api.StateSucceeded || run.Kind == api.KindDiffoscope {
		return
	}
	j, err := s.jobSpec(ctx, run.Job, run.Revision)
	if err != nil || j.Publish == nil || j.Publish.Trigger(j) != api.PublishOnSuccess {
		return
	}
	id, _ := parseID(run.ID)
	s.publishRun(context.WithoutCancel(ctx), j.Publish, s.jobOwner(ctx, run.Job), id, run.Artifacts)
}

// publishAfterVerdict publishes a reproducible group's packages (its
// baseline's artifacts, which every member has) when its job says
// [publish] when = "reproducible".
func (s *Server) publishAfterVerdict(ctx context.Context, members []api.Run) {
	if len(members) == 0 {
		return
	}
	base := members[0]
	j, err := s.jobSpec(ctx, base.Job, base.Revision)
	if err != nil || j.Publish == nil || j.Publish.Trigger(j) != api.PublishOnReproducible {
		return
	}
	id, _ := parseID(base.ID)
	s.publishRun(context.WithoutCancel(ctx), j.Publish, s.jobOwner(ctx, base.Job), id, base.Artifacts)
}

// jobOwner is the owner key of job name ("" when it cannot be read:
// then no repository lists it, and the publication is refused).
func (s *Server) jobOwner(ctx context.Context, name string) string {
	ji, err := s.st.job(ctx, name)
	if err != nil {
		return ""
	}
	return ji.Owner
}

func parseID(s string) (int64, error) {
	var id int64
	_, err := fmt.Sscan(s, &id)
	return id, err
}

// hRepoServe serves a repository's files at /repos/NAME/...: to anyone
// when it is public, to a token of an admin, client or worker otherwise
// (Bearer, or HTTP basic auth with the token as the password: what apt's
// auth.conf sends).
func (s *Server) hRepoServe(w http.ResponseWriter, r *http.Request) {
	if err := s.repoServe(w, r); err != nil {
		var ae *apiError
		if errors.As(err, &ae) && ae.status == http.StatusUnauthorized {
			w.Header().Set("WWW-Authenticate", `Basic realm="kiln repository"`)
		}
		s.writeError(w, r, err)
	}
}

func (s *Server) repoServe(w http.ResponseWriter, r *http.Request) error {
	name, rel := r.PathValue("name"), r.PathValue("path")
	if !names.Valid(name) {
		return notFound("no repository %q", name)
	}
	if err := names.ValidRelPath(rel); err != nil {
		return notFound("no file %q", rel)
	}
	repo, err := s.st.repo(r.Context(), name)
	if err != nil {
		return err
	}
	if !repo.Public {
		if _, pass, ok := r.BasicAuth(); ok {
			r = r.Clone(r.Context())
			r.Header.Set("Authorization", "Bearer "+pass)
		}
		p, err := s.authenticate(r.Context(), r)
		if err != nil {
			return err
		}
		if p.kind != kindAdmin && p.kind != kindClient && p.kind != kindWorker {
			return errorf(http.StatusForbidden, api.CodeForbidden, "a %s token may not read repositories", p.kind)
		}
		if err := s.checkRate(w, p); err != nil {
			return err
		}
	}
	if rel == "key.asc" {
		w.Header().Set("Content-Type", "application/pgp-keys")
		http.ServeContent(w, r, "key.asc", repo.Created, strings.NewReader(repo.publicKey))
		return nil
	}
	var byHashDir, byHashSHA string
	if i := strings.Index(rel, "/by-hash/SHA256/"); i >= 0 && strings.HasPrefix(rel, "dists/") {
		byHashDir, byHashSHA = rel[:i+1], rel[i+len("/by-hash/SHA256/"):]
		if len(byHashSHA) != 64 || strings.Trim(byHashSHA, "0123456789abcdef") != "" {
			return notFound("no file %q", rel)
		}
	}
	sha, size, ok, err := s.st.repoServed(r.Context(), name, rel, byHashDir, byHashSHA)
	if err != nil {
		return err
	}
	if !ok {
		return notFound("repository %q has no file %q", name, rel)
	}
	f, err := s.blobs.Open(sha)
	if err != nil {
		return fmt.Errorf("repository %q file %q: blob %s: %w", name, rel, sha, err)
	}
	defer f.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	if strings.HasPrefix(rel, "pool/") || byHashSHA != "" {
		// Content addressed: these bytes never change under this path.
		w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
	} else {
		w.Header().Set("Cache-Control", "no-cache")
	}
	http.ServeContent(w, r, "", repo.Published, io.NewSectionReader(f, 0, size))
	return nil
}

func (s *Server) hCreateRepo(w http.ResponseWriter, r *http.Request, p *principal) error {
	var req api.CreateRepoRequest
	if err := decodeRequest(r.Body, 2*aptrepo.MaxKeyFile, &req); err != nil {
		return err
	}
	repo, err := s.createRepo(r.Context(), &req)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, repo)
}

func (s *Server) hListRepos(w http.ResponseWriter, r *http.Request, p *principal) error {
	rs, err := s.st.repos(r.Context())
	if err != nil {
		return err
	}
	if rs == nil {
		rs = []api.Repo{}
	}
	return writeJSON(w, http.StatusOK, rs)
}

func (s *Server) hShowRepo(w http.ResponseWriter, r *http.Request, p *principal) error {
	repo, err := s.showRepo(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, repo)
}

func (s *Server) hRepoKey(w http.ResponseWriter, r *http.Request, p *principal) error {
	repo, err := s.st.repo(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, map[string]string{"key": repo.publicKey, "fingerprint": repo.Fingerprint})
}

func (s *Server) hRemoveRepo(w http.ResponseWriter, r *http.Request, p *principal) error {
	if err := s.st.removeRepo(r.Context(), r.PathValue("name")); err != nil {
		return err
	}
	s.log.Info("repository removed", "repo", r.PathValue("name"))
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) hRemoveRepoPackage(w http.ResponseWriter, r *http.Request, p *principal) error {
	arch := r.URL.Query().Get("arch")
	if arch != "" && !aptrepo.ValidArch(arch) {
		return badRequest("arch %q is not an architecture name", arch)
	}
	repo, err := s.removeRepoPackage(r.Context(), r.PathValue("name"), r.PathValue("package"), r.PathValue("version"), arch)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, repo)
}

// RepoBlobs lists the blobs the repositories reference (repo "": all of
// them): pool files and the index sets kept. Blob retention keeps these.
func (s *Server) RepoBlobs(ctx context.Context, repo string) ([]string, error) {
	return s.st.repoBlobs(ctx, repo)
}
