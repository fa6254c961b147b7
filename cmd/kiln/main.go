// Command kiln is the one binary of kiln: server, worker, and the CLI for
// jobs, runs, artifacts, hosts and images.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

// globals are the flags every command shares.
type globals struct {
	server     string // --server / KILN_SERVER
	token      string // --token / KILN_TOKEN
	tlsCA      string // --tls-ca / KILN_TLS_CA
	output     string // --output: "" (text) or "json"
	hostConfig string // --config for host-side commands
	verbose    bool
}

// exitError carries a specific process exit code (the job's own code for
// `kiln exec` and `kiln run observe`).
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

func newRoot(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:   "kiln",
		Short: "kiln runs shell jobs in throw-away sandboxes on enrolled build hosts",
		Long: `kiln schedules shell jobs from a small central queue onto enrolled build
hosts and runs each one in a fresh clone of a base image, inside one of four
sandbox tiers: a hardened containerd container, a gVisor sandbox or a
qemu-system VM (Linux), or a jail (FreeBSD); then it collects the job's
artifacts and destroys the clone.

A command group given no subcommand (kiln run) prints its help and exits 0;
an unknown subcommand (kiln run lsit) exits 1 and says which word it did not
know, with the nearest subcommands.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRun: func(cmd *cobra.Command, args []string) {
			level := slog.LevelInfo
			if g.verbose {
				level = slog.LevelDebug
			}
			slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})))
			// Read here, not as the flag's default: --help prints
			// defaults, and a token must not end up in a pasted help text.
			if g.token == "" {
				g.token = os.Getenv("KILN_TOKEN")
			}
		},
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.server, "server", os.Getenv("KILN_SERVER"), "server URL, or the URLs of several replicas separated by commas (tried in turn when one cannot be reached) (env KILN_SERVER)")
	pf.StringVar(&g.token, "token", "", "API token (env KILN_TOKEN)")
	pf.StringVar(&g.tlsCA, "tls-ca", os.Getenv("KILN_TLS_CA"), "PEM file of CA certificates to trust for an https server, besides the system's (env KILN_TLS_CA)")
	pf.StringVarP(&g.output, "output", "O", "", `output format: "" for text, "json"`)
	pf.BoolVarP(&g.verbose, "verbose", "v", false, "debug logging")
	// Each area (server, job, run, image, exec, ...) lives in its own file.
	root.AddCommand(
		newArtifactCmd(g),
		newCacheCmd(g),
		newExecCmd(g),
		newHostCmd(g),
		newImageCmd(g),
		newJobCmd(g),
		newRunCmd(g),
		newServerCmd(g),
		newRepoCmd(g),
		newTokenCmd(g),
		newWorkerCmd(g),
		newWebhookCmd(g),
	)
	strictGroups(root)
	return root
}

// strictGroups makes every command group below root (`kiln run`, `kiln host
// token`, ...) refuse an argument that names none of its subcommands. Cobra
// checks subcommand names on the root only: a group that cannot run itself
// answers any argument with its help and exit 0, so a script calling
// `kiln run lsit` would never notice its typo. A group given no argument
// still prints its help and exits 0, as `kiln` alone does: that is a request
// for the menu, not a mistake.
func strictGroups(root *cobra.Command) {
	for _, c := range root.Commands() {
		if c.HasSubCommands() && !c.Runnable() {
			c.RunE = runGroup
		}
		strictGroups(c)
	}
}

// runGroup is the RunE of a command group: reached only when no subcommand
// matched its first argument.
func runGroup(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return cmd.Help()
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2 // cobra's own default, which it sets on the root only
	}
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		msg += "\n\nDid you mean this?\n\t" + strings.Join(s, "\n\t")
	}
	return fmt.Errorf("%s\n\nRun '%s --help' for usage", msg, cmd.CommandPath())
}

func main() {
	// KILN_CPUPROFILE=PREFIX writes a CPU profile to PREFIX.<pid> for
	// benchmarking the daemons (see docs/benchmarks.md).
	if prefix := os.Getenv("KILN_CPUPROFILE"); prefix != "" {
		//nolint:gosec // G703: the profile path is the operator's own KILN_CPUPROFILE
		if f, err := os.Create(fmt.Sprintf("%s.%d", prefix, os.Getpid())); err == nil {
			if pprof.StartCPUProfile(f) == nil {
				defer pprof.StopCPUProfile()
			}
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	g := &globals{}
	err := newRoot(g).ExecuteContext(ctx)
	stop()
	if err == nil {
		return
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.msg != "" {
			fmt.Fprintln(os.Stderr, "kiln:", ee.msg)
		}
		pprof.StopCPUProfile()
		os.Exit(ee.code)
	}
	fmt.Fprintln(os.Stderr, "kiln:", err)
	pprof.StopCPUProfile()
	os.Exit(1)
}

// daemonGC lets the long-running daemons' heaps grow to five times the live
// data between collections instead of twice: their live heap is a few MiB,
// and at Go's default they spent a sixth of their CPU collecting it. An
// explicit GOGC wins.
func daemonGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
}
