package api_test

import (
	"errors"
	"testing"

	"github.com/kiln-build/kiln/api"
)

func TestPublishKey(t *testing.T) {
	const base = "name = \"j\"\nimage = \"debian\"\nscript = \"true\"\n"
	for _, c := range []struct {
		name, file string
		ok         bool
		when       string // Trigger's answer
	}{
		{"default success", base + "[publish]\nrepo = \"tools\"\n", true, api.PublishOnSuccess},
		{"default reproducible", base + "reproduce = 2\n[publish]\nrepo = \"tools\"\n", true, api.PublishOnReproducible},
		{"success in a group", base + "reproduce = 3\n[publish]\nrepo = \"tools\"\nwhen = \"success\"\n", true, api.PublishOnSuccess},
		{"component", base + "[publish]\nrepo = \"tools\"\ncomponent = \"contrib\"\n", true, api.PublishOnSuccess},
		{"reproducible without reproduce", base + "[publish]\nrepo = \"tools\"\nwhen = \"reproducible\"\n", false, ""},
		{"unknown when", base + "[publish]\nrepo = \"tools\"\nwhen = \"always\"\n", false, ""},
		{"no repo", base + "[publish]\nwhen = \"success\"\n", false, ""},
		{"path repo", base + "[publish]\nrepo = \"../x\"\n", false, ""},
		{"path component", base + "[publish]\nrepo = \"tools\"\ncomponent = \"a/b\"\n", false, ""},
		{"unknown key", base + "[publish]\nrepo = \"tools\"\nsuite = \"x\"\n", false, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			j, err := api.ParseJobFile([]byte(c.file))
			if c.ok != (err == nil) {
				t.Fatalf("ParseJobFile = %v, want ok %v", err, c.ok)
			}
			if err != nil {
				if !errors.Is(err, api.ErrInvalidJob) {
					t.Fatalf("error %v does not wrap ErrInvalidJob", err)
				}
				return
			}
			if got := j.Publish.Trigger(j); got != c.when {
				t.Fatalf("Trigger = %q, want %q", got, c.when)
			}
			// The TOML form reads back the same.
			b, err := j.MarshalTOML()
			if err != nil {
				t.Fatal(err)
			}
			j2, err := api.ParseJobFile(b)
			if err != nil || *j2.Publish != *j.Publish {
				t.Fatalf("round trip: %+v %v", j2, err)
			}
		})
	}
}

func TestCreateRepoRequestValidate(t *testing.T) {
	for _, c := range []struct {
		name string
		req  api.CreateRepoRequest
		ok   bool
	}{
		{"defaults", api.CreateRepoRequest{Name: "tools", Suite: "bookworm"}, true},
		{"arches", api.CreateRepoRequest{Name: "tools", Suite: "stable", Arches: []string{"amd64", "arm64"}, Components: []string{"main", "contrib"}}, true},
		{"no suite", api.CreateRepoRequest{Name: "tools"}, false},
		{"suite path", api.CreateRepoRequest{Name: "tools", Suite: "a/b"}, false},
		{"arch twice", api.CreateRepoRequest{Name: "tools", Suite: "s", Arches: []string{"amd64", "amd64"}}, false},
		{"arch all", api.CreateRepoRequest{Name: "tools", Suite: "s", Arches: []string{"all"}}, false},
		{"component upper", api.CreateRepoRequest{Name: "tools", Suite: "s", Components: []string{"Main"}}, false},
		{"rpm", api.CreateRepoRequest{Name: "tools", Suite: "s", Type: "rpm"}, false},
		{"bad name", api.CreateRepoRequest{Name: "a b", Suite: "s"}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := c.req.Validate()
			if c.ok != (err == nil) {
				t.Fatalf("Validate = %v, want ok %v", err, c.ok)
			}
			if c.ok && (c.req.Type != api.RepoTypeApt || len(c.req.Components) == 0 || len(c.req.Arches) == 0) {
				t.Fatalf("defaults not filled: %+v", c.req)
			}
		})
	}
}
