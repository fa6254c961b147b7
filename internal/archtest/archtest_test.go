package archtest

import (
	"bytes"
	"os"
	"os/exec"
	"sort"
	"strings"
	"testing"
)

const module = "github.com/kiln-build/kiln/"

// edge is one import, from one kiln package to another (paths without the
// module prefix).
type edge struct{ from, to string }

// knownExceptions are imports that break a rule below today and are allowed
// until they are moved; each names why. A rule is checked over every path
// of imports that avoids these edges, so any new path still fails.
var knownExceptions = map[edge]string{}

// rule forbids packages matching from (but not except) to reach packages
// matching any of forbidden, other than themselves, directly or through
// other kiln packages. A pattern "p/..." matches p and every package below
// it; "..." matches every package.
type rule struct {
	name      string
	from      []string
	except    []string
	forbidden []string
	allowed   []string // not forbidden after all
}

// hostPackages touch the host a job runs on: storage, launchers, images,
// the worker. The server must link none of them.
var hostPackages = []string{
	"linux/...", "vm/...", "freebsd/...", "zfsstore/...", "sandbox/...",
	"worker/...", "cache/...", "images/...", "platform/...", "qemu/...",
	"internal/mounts", "internal/storekit", "internal/seccompbpf", "runreq/...",
}

var rules = []rule{
	{
		name: "the sandbox layer speaks no wire protocol",
		from: []string{"sandbox/..."},
		// A test helper, kept out of what ships by the last rule; it
		// drives launchers with testsupport's helpers.
		except:    []string{"sandbox/launchertest"},
		forbidden: []string{"api/...", "scheduler/...", "worker/..."},
	},
	{
		name:      "the server links no host package",
		from:      []string{"scheduler/..."},
		forbidden: hostPackages,
	},
	{
		name:      "the server's queue matches in memory: it links no other server package",
		from:      []string{"scheduler/queue"},
		forbidden: []string{"scheduler/...", "config/..."},
	},
	{
		name:      "the wire types link neither the server nor a host package",
		from:      []string{"api/..."},
		forbidden: append([]string{"scheduler/...", "config/..."}, hostPackages...),
	},
	{
		name:      "the worker and the host backends do not link the server",
		from:      append([]string{"config/...", "debsrc/..."}, hostPackages...),
		except:    []string{"sandbox/launchertest"},
		forbidden: []string{"scheduler/..."},
	},
	{
		name:      "backends do not depend on the worker or on platform, which wires them",
		from:      []string{"linux/...", "vm/...", "freebsd/...", "zfsstore/...", "images/...", "sandbox/...", "cache/...", "qemu/..."},
		forbidden: []string{"worker/...", "platform/..."},
	},
	{
		name:      "leaf packages import no kiln package",
		from:      []string{"errdefs/...", "names/...", "internal/durable/...", "internal/flock/...", "internal/mounts/...", "internal/seccompbpf/...", "internal/cleanup/...", "units/..."},
		forbidden: []string{"..."},
	},
	{
		// It checks a run's owner key as api does, by the name rules.
		name:      "cache imports only the name rules",
		from:      []string{"cache/..."},
		forbidden: []string{"..."},
		allowed:   []string{"names"},
	},
	{
		// It reads packages and writes index files; the server stores
		// them. Keeping it a leaf keeps hostile .debs away from anything
		// but the parser and its bounds.
		name:      "aptrepo imports no kiln package",
		from:      []string{"aptrepo/..."},
		forbidden: []string{"..."},
	},
	{
		name:      "test helpers stay out of what ships",
		from:      []string{"..."},
		except:    []string{"internal/testsupport/...", "sandbox/storagetest/...", "sandbox/launchertest/..."},
		forbidden: []string{"internal/testsupport/...", "sandbox/storagetest/...", "sandbox/launchertest/..."},
	},
}

func matches(pkg, pattern string) bool {
	if pattern == "..." {
		return true
	}
	if p, ok := strings.CutSuffix(pattern, "/..."); ok {
		return pkg == p || strings.HasPrefix(pkg, p+"/")
	}
	return pkg == pattern
}

func matchesAny(pkg string, patterns []string) bool {
	for _, p := range patterns {
		if matches(pkg, p) {
			return true
		}
	}
	return false
}

// imports lists the direct, non-test imports among kiln's own packages as
// go list sees them for goos.
func imports(t *testing.T, goos string) map[string][]string {
	t.Helper()
	gobin, err := exec.LookPath("go") // go test puts its own go first on PATH
	if err != nil {
		t.Fatalf("go not on PATH: %v", err)
	}
	cmd := exec.CommandContext(t.Context(), gobin, "list", "-e", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, "../../...")
	cmd.Env = append(os.Environ(), "GOOS="+goos)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list (GOOS=%s): %v\n%s", goos, err, stderr.String())
	}
	graph := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], module) {
			continue
		}
		from := strings.TrimPrefix(f[0], module)
		graph[from] = nil
		for _, imp := range f[1:] {
			if to, ok := strings.CutPrefix(imp, module); ok {
				graph[from] = append(graph[from], to)
			}
		}
	}
	if len(graph) < 20 {
		t.Fatalf("go list (GOOS=%s) found only %d kiln packages", goos, len(graph))
	}
	return graph
}

// reach returns, for every package start reaches through imports that are
// not known exceptions, the chain of imports that gets there.
func reach(graph map[string][]string, start string) map[string][]string {
	paths := map[string][]string{start: {start}}
	queue := []string{start}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, q := range graph[p] {
			if _, seen := paths[q]; seen {
				continue
			}
			if _, ok := knownExceptions[edge{p, q}]; ok {
				continue
			}
			paths[q] = append(append([]string(nil), paths[p]...), q)
			queue = append(queue, q)
		}
	}
	return paths
}

// TestImportRules keeps the package rules of docs/architecture.md true on
// Linux and on FreeBSD: a forbidden import fails with the chain of imports
// that leads to it.
func TestImportRules(t *testing.T) {
	for _, goos := range []string{"linux", "freebsd"} {
		t.Run(goos, func(t *testing.T) {
			graph := imports(t, goos)
			pkgs := make([]string, 0, len(graph))
			for p := range graph {
				pkgs = append(pkgs, p)
			}
			sort.Strings(pkgs)
			for _, r := range rules {
				t.Run(r.name, func(t *testing.T) {
					for _, from := range pkgs {
						if !matchesAny(from, r.from) || matchesAny(from, r.except) {
							continue
						}
						for to, chain := range reach(graph, from) {
							if to != from && matchesAny(to, r.forbidden) && !matchesAny(to, r.allowed) {
								t.Errorf("%s reaches %s: %s", from, to, strings.Join(chain, " -> "))
							}
						}
					}
				})
			}
			// An exception that no longer occurs is dead: drop it.
			for e, why := range knownExceptions {
				found := false
				for _, to := range graph[e.from] {
					found = found || to == e.to
				}
				if !found {
					t.Errorf("known exception %s -> %s (%s) no longer occurs: remove it", e.from, e.to, why)
				}
			}
		})
	}
}

// TestQueueLinksNoDatabase: the server's queue is an index in memory that
// its unit tests exercise without a database; the store is the only layer
// that talks to one.
func TestQueueLinksNoDatabase(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go not on PATH: %v", err)
	}
	out, err := exec.CommandContext(t.Context(), gobin, "list", "-deps", "../../scheduler/queue").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		if dep == "database/sql" || strings.Contains(dep, "sqlite") || strings.Contains(dep, "pgx") {
			t.Errorf("scheduler/queue links %s", dep)
		}
	}
}
