package main

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra/doc"
)

var updateCLIDocs = flag.Bool("update-cli-docs", false, "rewrite docs/cli from the cobra tree")

// TestCLIDocsCurrent keeps docs/cli, the CLI reference, generated from the
// command tree itself: a flag or command changed without regenerating fails
// here. Regenerate with:
//
//	go test ./cmd/kiln -run TestCLIDocsCurrent -update-cli-docs
func TestCLIDocsCurrent(t *testing.T) {
	// Flag defaults read from the environment must not leak into the docs.
	t.Setenv("KILN_SERVER", "")
	t.Setenv("KILN_TOKEN", "")
	t.Setenv("KILN_TLS_CA", "")
	root := newRoot(&globals{})
	root.DisableAutoGenTag = true
	gen := t.TempDir()
	if err := doc.GenMarkdownTree(root, gen); err != nil {
		t.Fatal(err)
	}
	want := filepath.Join("..", "..", "docs", "cli")
	if *updateCLIDocs {
		old, _ := filepath.Glob(filepath.Join(want, "*.md"))
		for _, f := range old {
			if err := os.Remove(f); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.MkdirAll(want, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	genFiles, _ := filepath.Glob(filepath.Join(gen, "*.md"))
	seen := map[string]bool{}
	for _, f := range genFiles {
		name := filepath.Base(f)
		seen[name] = true
		got, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if *updateCLIDocs {
			if err := os.WriteFile(filepath.Join(want, name), got, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		have, err := os.ReadFile(filepath.Join(want, name))
		if err != nil || string(have) != string(got) {
			t.Errorf("docs/cli/%s is stale or missing; regenerate: go test ./cmd/kiln -run TestCLIDocsCurrent -update-cli-docs", name)
		}
	}
	if *updateCLIDocs {
		return
	}
	stored, _ := filepath.Glob(filepath.Join(want, "*.md"))
	for _, f := range stored {
		if name := filepath.Base(f); !seen[name] && !strings.HasPrefix(name, "README") {
			t.Errorf("docs/cli/%s documents a command that no longer exists; regenerate", name)
		}
	}
}
