package api

import (
	"context"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/kiln-build/kiln/names"
)

// Repositories (docs/publishing.md): the server keeps signed package
// repositories and publishes runs' packages into them.

// Repository types.
const RepoTypeApt = "apt"

// When a job's output is published ([publish] when).
const (
	PublishOnSuccess      = "success"      // each succeeded run
	PublishOnReproducible = "reproducible" // a group's reproducible verdict, its baseline's artifacts
)

// Publication states (Publication.State).
const (
	PublishedNew       = "published" // added; a new index set is served
	PublishedUnchanged = "unchanged" // every package was there with the same bytes
	PublishRefused     = "refused"   // a package's version is published with other bytes, or does not fit the repository
	PublishFailed      = "failed"    // the server could not publish (see Detail); nothing changed
)

// Publish is a job's [publish] table: where its packages go.
type Publish struct {
	Repo string `toml:"repo" json:"repo"`
	// When is PublishOnSuccess or PublishOnReproducible; "" is
	// reproducible for a job with reproduce >= 2, success otherwise.
	When string `toml:"when,omitempty" json:"when,omitempty"`
	// Component is the repository component (default its first).
	Component string `toml:"component,omitempty" json:"component,omitempty"`
}

// Trigger is When with its default for job j filled in.
func (p *Publish) Trigger(j *Job) string {
	if p.When != "" {
		return p.When
	}
	if j.Reproduce >= 2 {
		return PublishOnReproducible
	}
	return PublishOnSuccess
}

var (
	suiteRe     = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
	componentRe = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)
	debArchRe   = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,31}$`)
)

// ValidSuite reports whether s may name a suite or component of an apt
// repository: it becomes a directory under dists/.
func ValidSuite(s string) bool { return suiteRe.MatchString(s) }

// validate checks a job's [publish] table.
func (p *Publish) validate(j *Job) error {
	switch {
	case p.Repo == "":
		return fmt.Errorf("publish.repo is missing")
	case !names.Valid(p.Repo):
		return fmt.Errorf("publish.repo %q is not a valid name", p.Repo)
	case p.When != "" && p.When != PublishOnSuccess && p.When != PublishOnReproducible:
		return fmt.Errorf("publish.when %q: want \"success\" or \"reproducible\"", p.When)
	case p.When == PublishOnReproducible && j.Reproduce < 2:
		return fmt.Errorf("publish.when \"reproducible\" needs reproduce >= 2")
	case p.Component != "" && !componentRe.MatchString(p.Component):
		return fmt.Errorf("publish.component %q: want lowercase letters, digits, '.', '_', '-'", p.Component)
	}
	return nil
}

// CreateRepoRequest is POST /v1/repos.
type CreateRepoRequest struct {
	Name       string   `json:"name"`
	Type       string   `json:"type"`
	Suite      string   `json:"suite"`
	Components []string `json:"components,omitempty"` // default ["main"]
	Arches     []string `json:"arches,omitempty"`     // default ["amd64"]
	Public     bool     `json:"public,omitempty"`
	// Publishers are the client tokens whose jobs may publish into the
	// repository: "token:NAME" or "group:NAME" (kiln token create --group);
	// the admin's jobs always may.
	Publishers []string `json:"publishers,omitempty"`
	// Key is an OpenPGP private key (armored) to sign with; empty: the
	// server makes one. It never leaves the server again.
	Key string `json:"key,omitempty"`
}

// Validate checks the request and fills in its defaults.
func (r *CreateRepoRequest) Validate() error {
	if r.Type == "" {
		r.Type = RepoTypeApt
	}
	if len(r.Components) == 0 {
		r.Components = []string{"main"}
	}
	if len(r.Arches) == 0 {
		r.Arches = []string{"amd64"}
	}
	switch {
	case !names.Valid(r.Name):
		return fmt.Errorf("repository name %q: use letters, digits, '.', '_', '-', at most 63", r.Name)
	case r.Type != RepoTypeApt:
		return fmt.Errorf("repository type %q: only %q is supported", r.Type, RepoTypeApt)
	case !ValidSuite(r.Suite):
		return fmt.Errorf("suite %q: want letters, digits, '.', '_', '-'", r.Suite)
	case len(r.Components) > 16 || len(r.Arches) > 16:
		return fmt.Errorf("at most 16 components and 16 architectures")
	}
	seen := map[string]bool{}
	for _, c := range r.Components {
		if !componentRe.MatchString(c) || seen["c"+c] {
			return fmt.Errorf("component %q: want lowercase letters, digits, '.', '_', '-', each once", c)
		}
		seen["c"+c] = true
	}
	for _, p := range r.Publishers {
		kind, name, _ := strings.Cut(p, ":")
		if (kind != "token" && kind != "group") || !names.Valid(name) {
			return fmt.Errorf("publisher %q: want token:NAME or group:NAME", p)
		}
	}
	for _, a := range r.Arches {
		if !debArchRe.MatchString(a) || a == "all" || seen["a"+a] {
			return fmt.Errorf("architecture %q: want a Debian architecture name (not \"all\"), each once", a)
		}
		seen["a"+a] = true
	}
	return nil
}

// Repo is a repository as the server shows it.
type Repo struct {
	Name        string    `json:"name"`
	Type        string    `json:"type"`
	Suite       string    `json:"suite"`
	Components  []string  `json:"components"`
	Arches      []string  `json:"arches"`
	Public      bool      `json:"public"`
	Publishers  []string  `json:"publishers,omitempty"`
	Fingerprint string    `json:"fingerprint"` // of the signing key
	Created     time.Time `json:"created"`
	// Generation counts the index sets published; Published is when the
	// current one was.
	Generation int64     `json:"generation"`
	Published  time.Time `json:"published,omitzero"`
	// Packages is set by GET /v1/repos/{name}.
	Packages []RepoPackage `json:"packages,omitempty"`
}

// RepoPackage is one package file in a repository.
type RepoPackage struct {
	Name      string    `json:"name"`
	Version   string    `json:"version"`
	Arch      string    `json:"arch"`
	Component string    `json:"component"`
	Filename  string    `json:"filename"`
	Size      int64     `json:"size"`
	SHA256    string    `json:"sha256"`
	Run       string    `json:"run,omitempty"` // the run that published it
	Added     time.Time `json:"added"`
}

// Publication is what became of a run's (or group's) packages in a
// repository.
type Publication struct {
	Repo  string `json:"repo"`
	Run   string `json:"run"`
	State string `json:"state"`
	// Packages are NAME_VERSION_ARCH of the packages it concerned.
	Packages []string `json:"packages,omitempty"`
	// Detail says why it was refused or failed, naming both digests of a
	// version published with other bytes.
	Detail string    `json:"detail,omitempty"`
	Time   time.Time `json:"time"`
}

// CreateRepo makes a repository (admin).
func (c *Client) CreateRepo(ctx context.Context, req *CreateRepoRequest) (*Repo, error) {
	var out Repo
	_, err := c.do(ctx, "POST", "/v1/repos", nil, req, &out)
	return &out, err
}

// Repos lists the repositories.
func (c *Client) Repos(ctx context.Context) ([]Repo, error) {
	var out []Repo
	_, err := c.do(ctx, "GET", "/v1/repos", nil, nil, &out)
	return out, err
}

// Repo shows a repository with its packages.
func (c *Client) Repo(ctx context.Context, name string) (*Repo, error) {
	var out Repo
	_, err := c.do(ctx, "GET", "/v1/repos/"+esc(name), nil, nil, &out)
	return &out, err
}

// RepoKey is a repository's armored public signing key.
func (c *Client) RepoKey(ctx context.Context, name string) (string, error) {
	var out struct {
		Key string `json:"key"`
	}
	_, err := c.do(ctx, "GET", "/v1/repos/"+esc(name)+"/key", nil, nil, &out)
	return out.Key, err
}

// RemoveRepo deletes a repository, its packages and index sets (admin).
func (c *Client) RemoveRepo(ctx context.Context, name string) error {
	_, err := c.do(ctx, "DELETE", "/v1/repos/"+esc(name), nil, nil, nil)
	return err
}

// RemoveRepoPackage takes package version out of a repository (every
// architecture, or only arch) and publishes the index without it (admin).
func (c *Client) RemoveRepoPackage(ctx context.Context, repo, pkg, version, arch string) (*Repo, error) {
	var out Repo
	q := url.Values{}
	if arch != "" {
		q.Set("arch", arch)
	}
	_, err := c.do(ctx, "DELETE", "/v1/repos/"+esc(repo)+"/packages/"+esc(pkg)+"/"+esc(version), q, nil, &out)
	return &out, err
}
