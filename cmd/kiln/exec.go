package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/spf13/cobra"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/cache"
	"github.com/kiln-build/kiln/config"
	"github.com/kiln-build/kiln/names"
	"github.com/kiln-build/kiln/platform"
	"github.com/kiln-build/kiln/runreq"
	"github.com/kiln-build/kiln/sandbox"
)

func newExecCmd(g *globals) *cobra.Command {
	var inputs []string
	var outDir string
	cmd := &cobra.Command{
		Use:   "exec FILE",
		Short: "Run one job file on this host, without a server",
		Long: `Run one job file on this host, without a server: clone the job's image,
start a sandbox, stream the console to stdout, collect the artifacts left in
/out into DIR, destroy the sandbox and the clone, and exit with the job's own
exit code (124 for a timeout, 128+N for a signal; stderr says which).

The run is bounded by the job's [resources] and timeout, and by the host
config's [limits] defaults for what the job does not ask; a job asking more
than a [limits] maximum is refused before anything runs (docs/limits.md).

Inputs named in the job file are given with --input (matched by file name);
an --input the job file does not list is added at /in/<file name>.
Before it starts, exec reaps sandboxes and clones of its data dir left behind
by kiln processes that died (for example by kill -9), qemu guests included.
It refuses to run on a data dir a worker holds (the error names the worker's
pid); give it a host config with another data_dir, or run the job through the
server.

A job with isolation = "vm" runs in a qemu-system guest with its own kernel
([vm] in the host config, docs/vm.md); it needs no containerd. With
network = "bridge" the guest gets the network a container would get (the CNI
plugins and iptables, [network] in the host config, docs/network.md).

Hooks the job names in [hooks] must be defined in the host config; they run
on this host, their output marked "[hook NAME]" in the console. A failing pre
hook stops the run before it starts (exit code 1). A failing post or cleanup
hook is a failed check: the artifacts are kept, stderr names the check, and
exec exits with 3 if the job itself succeeded (a failed job's own code wins).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runExec(cmd.Context(), g, args[0], inputs, outDir, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	addHostConfigFlag(cmd, g)
	cmd.Flags().StringArrayVar(&inputs, "input", nil, "input file placed at /in/<name> (repeatable)")
	cmd.Flags().StringVarP(&outDir, "out", "o", "", "directory for the artifacts (default ./artifacts/<run-id>)")
	return cmd
}

// addHostConfigFlag adds --config for the commands that act on this host.
func addHostConfigFlag(cmd *cobra.Command, g *globals) {
	cmd.Flags().StringVar(&g.hostConfig, "config", "", "host config file (default "+config.DefaultHostConfigPath+")")
}

func loadHostConfig(g *globals) (*config.Host, error) {
	if g.hostConfig != "" {
		return config.LoadHost(g.hostConfig, true)
	}
	return config.LoadHost(config.DefaultHostConfigPath, false)
}

func runExec(ctx context.Context, g *globals, file string, inputFiles []string, outDir string, stdout, stderr io.Writer) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	job, err := api.ParseJobFile(data)
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	cfg, err := loadHostConfig(g)
	if err != nil {
		return err
	}
	ins, err := matchInputs(job, inputFiles)
	if err != nil {
		return err
	}
	if outDir != "" {
		if err := checkOutDir(outDir); err != nil {
			return err
		}
	}
	runID := newRunID("x")
	if outDir == "" {
		outDir = filepath.Join("artifacts", runID)
	}
	// Shared: execs may run side by side, but never beside a worker of
	// this data dir, whose leases the reap below cannot see.
	lock, err := platform.LockDataDir(cfg.DataDir, false, "kiln exec")
	if err != nil {
		return err
	}
	defer lock.Release()
	host, err := platform.Open(ctx, cfg)
	if err != nil {
		return err
	}
	defer host.Close()
	// A job can only pick hooks, host tools and caches the admin
	// configured, within the host's limits.
	req, err := hostPolicy(cfg).Request(ctx, hostImages{host.Images()}, runreq.Run{
		ID: runID, Attempt: 1, Job: job,
		// The host's own runs have a tree of each cache of their own.
		CacheOwner: cache.LocalOwner,
		Inputs:     func(context.Context) ([]sandbox.InputFile, error) { return ins, nil },
		OutDir:     outDir, Console: stdout,
	})
	if err != nil {
		return err
	}
	runner, err := host.Runner(ctx, "")
	if err != nil {
		return err
	}
	if err := runner.CheckIsolation(job.Isolation); err != nil {
		return err
	}
	if err := runner.Reap(ctx, nil); err != nil {
		fmt.Fprintln(stderr, "kiln: warning: reaping leftovers:", err)
	}
	fmt.Fprintf(stderr, "kiln: run %s of %s on %s (%s)\n", runID, job.Name, req.Snapshot, req.Arch)
	res, err := runner.Run(ctx, req)
	defer func() { _ = runner.Forget(runID) }()
	if err != nil {
		printFailedChecks(stderr, res)
		return err
	}
	for _, a := range res.Artifacts {
		if a.Link != "" {
			fmt.Fprintf(stderr, "kiln: artifact %s -> %s\n", filepath.Join(outDir, a.Path), a.Link)
		} else if a.Mode.IsRegular() {
			fmt.Fprintf(stderr, "kiln: artifact %s (%d bytes, sha256 %s)\n", filepath.Join(outDir, a.Path), a.Size, a.SHA256)
		}
	}
	failed := printFailedChecks(stderr, res)
	if code := res.ExitCode(); code != 0 || res.Cancelled {
		if code == 0 {
			code = 130
		}
		return &exitError{code: code, msg: fmt.Sprintf("run %s: %s", runID, res.Describe())}
	}
	if failed > 0 {
		return &exitError{code: exitCheckFailed, msg: fmt.Sprintf("run %s: job succeeded, %d check(s) failed", runID, failed)}
	}
	return nil
}

// printFailedChecks names every failed post and cleanup hook on w and
// returns how many there were. A failed pre hook is left out: it is the
// run's error, reported as such.
func printFailedChecks(w io.Writer, res sandbox.Result) int {
	n := 0
	for _, c := range res.FailedChecks() {
		if c.Stage == sandbox.StagePre {
			continue
		}
		fmt.Fprintf(w, "kiln: check %s (%s hook) failed: %s\n", c.Name, c.Stage, c.Err)
		n++
	}
	return n
}

// exitCheckFailed is kiln exec's exit code when the job succeeded but a
// post or cleanup hook failed.
const exitCheckFailed = 3

// hostPolicy is what the host config lets a run have.
func hostPolicy(cfg *config.Host) runreq.Policy {
	return runreq.Policy{Hooks: hookDefs(cfg), HostTools: cfg.HostTools, Caches: cacheDefs(cfg),
		Defaults: cfg.Limits.Defaults(), Max: cfg.Limits.Max(), Config: cfg.Path()}
}

// hookDefs turns the host config's [hooks] into the sandbox's definitions,
// for sandbox.SelectHooks.
func hookDefs(cfg *config.Host) map[string]sandbox.Hook {
	defs := make(map[string]sandbox.Hook, len(cfg.Hooks))
	for name, h := range cfg.Hooks {
		defs[name] = sandbox.Hook{Name: name, Stage: sandbox.Stage(h.Stage), Command: h.Command, Timeout: h.Timeout.Std()}
	}
	return defs
}

// matchInputs pairs the job's input entries with --input files by name,
// verifying announced sha256 sums before anything is cloned.
func matchInputs(j *api.Job, files []string) ([]sandbox.InputFile, error) {
	byName := map[string]string{}
	for _, f := range files {
		base := filepath.Base(f)
		if _, dup := byName[base]; dup {
			return nil, fmt.Errorf("--input %s: two inputs named %s", f, base)
		}
		byName[base] = f
	}
	var out []sandbox.InputFile
	for _, in := range j.Inputs {
		src, ok := byName[filepath.Base(in.Path)]
		if !ok {
			return nil, fmt.Errorf("job input %s: pass the file with --input", in.Path)
		}
		delete(byName, filepath.Base(in.Path))
		sum, err := fileSHA256(src)
		if err != nil {
			return nil, err
		}
		if sum != in.SHA256 {
			return nil, fmt.Errorf("input %s: %w: job file says %s, %s has %s", in.Path, sandbox.ErrChecksum, in.SHA256, src, sum)
		}
		out = append(out, sandbox.InputFile{Path: in.Path, Source: src, SHA256: sum})
	}
	given := make([]string, 0, len(byName))
	for n := range byName {
		given = append(given, n)
	}
	sort.Strings(given)
	for _, n := range given {
		if err := names.ValidRelPath(n); err != nil {
			return nil, fmt.Errorf("--input %s: %w", n, err)
		}
		sum, err := fileSHA256(byName[n])
		if err != nil {
			return nil, err
		}
		out = append(out, sandbox.InputFile{Path: n, Source: byName[n], SHA256: sum})
	}
	return out, nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// newRunID makes a local run id: prefix, then 12 random hex digits.
func newRunID(prefix string) string {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(errors.New("crypto/rand failed"))
	}
	return prefix + "-" + hex.EncodeToString(b[:])
}

// checkOutDir refuses an output directory that already holds files before
// anything runs: artifacts never overwrite, and a run whose artifacts
// cannot be written would be wasted.
func checkOutDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("-o %s: %w", dir, err)
	}
	if len(entries) > 0 {
		return fmt.Errorf("-o %s: directory is not empty; artifacts are never overwritten (remove it or choose another)", dir)
	}
	return nil
}
