package main

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/kiln-build/kiln/api"
)

func newRunCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "run",
		Short: "List, follow and cancel runs",
	}
	cmd.AddCommand(newRunListCmd(g), newRunInfoCmd(g), newRunObserveCmd(g), newRunCancelCmd(g), newRunGroupCmd(g), newRunCompareCmd(g))
	cmd.AddCommand(newRunKeepCmd(g, true), newRunKeepCmd(g, false))
	return cmd
}

// newRunListCmd builds `kiln run list`.
func newRunListCmd(g *globals) *cobra.Command {
	var job, group string
	var limit int
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List runs, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			var runs []api.Run
			if group != "" {
				runs, err = c.ListGroupRuns(cmd.Context(), group, limit)
			} else {
				runs, err = c.ListRuns(cmd.Context(), job, limit)
			}
			if err != nil {
				return err
			}
			return g.printList(cmd.OutOrStdout(), runs, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "ID\tJOB\tREV\tSTATE\tATTEMPT\tHOST\tCREATED\tEXIT")
				for _, r := range runs {
					exit := "-"
					if r.ExitCode != nil {
						exit = fmt.Sprint(*r.ExitCode)
					}
					name := r.Job
					if r.Kind != api.KindJob {
						name += " (" + r.Kind + ")"
					}
					fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%s\t%s\t%s\n", r.ID, name, r.Revision, r.State, r.Attempt, orDash(r.Host), fmtTime(r.Created), exit)
				}
			})
		},
	}
	cmd.Flags().StringVar(&job, "job", "", "only runs of this job")
	cmd.Flags().StringVar(&group, "group", "", "only the members of this reproduce group")
	cmd.Flags().IntVar(&limit, "limit", 100, "at most this many runs")
	return cmd
}

// newRunInfoCmd builds `kiln run info`.
func newRunInfoCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "info RUN",
		Short: "Show a run and its artifacts",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			r, err := c.GetRun(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			var grp *api.Group
			if r.Group != "" && g.output != "json" {
				if grp, err = c.GetGroup(cmd.Context(), r.Group); err != nil {
					return err
				}
			}
			return g.printList(cmd.OutOrStdout(), r, func(tw *tabwriter.Writer) {
				p := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
				p("run", r.ID)
				p("job", fmt.Sprintf("%s (revision %d)", r.Job, r.Revision))
				p("state", r.State)
				if r.Waiting != "" {
					p("waiting", r.Waiting)
				}
				if r.Phase != "" {
					p("phase", r.Phase) // e.g. fetching image bookworm@3 (212 MiB)
				}
				p("attempt", fmt.Sprint(r.Attempt))
				p("trigger", r.Trigger)
				if r.Priority != 0 {
					p("priority", fmt.Sprint(r.Priority))
				}
				if r.Kept {
					p("kept", "yes (kiln run keep)")
				}
				if d := r.Diffoscope; d != nil {
					p("task", fmt.Sprintf("%s of group %s: run %s against run %s, %d files", r.Kind, d.Group, d.RunA, d.RunB, len(d.Files)))
				}
				p("host", orDash(r.Host))
				p("created", fmtTime(r.Created))
				p("started", fmtTime(r.Started))
				p("finished", fmtTime(r.Finished))
				if r.ExitCode != nil {
					p("exit code", fmt.Sprint(*r.ExitCode))
				}
				if r.Signal != "" {
					p("signal", r.Signal)
				}
				if r.Error != "" {
					p("error", r.Error)
				}
				p("console", fmt.Sprintf("%d bytes", r.LogSize))
				if r.Image != "" {
					p("image", r.Image+" ("+r.ImageDigest+")")
				}
				if r.Snapshot != "" {
					p("snapshot", r.Snapshot)
				}
				for _, n := range r.Needs {
					p("needs", fmt.Sprintf("%s run %s (%s)", n.Job, n.Run, n.State))
				}
				if r.Key != "" {
					p("key", r.Key)
				}
				for _, a := range r.Artifacts {
					p("artifact", fmt.Sprintf("%s (%d bytes, %s)", a.Path, a.Size, a.SHA256))
				}
				for _, pb := range r.Publications {
					p("published", fmtPublication(pb))
				}
				for _, c := range r.Checks {
					st := "ok"
					if c.Failed() {
						st = "FAILED: " + c.Error
					}
					p("check", fmt.Sprintf("%s (%s) exit %d %s", c.Name, c.Stage, c.ExitCode, st))
				}
				for _, n := range r.Notifications {
					p("notify", notificationLine(n))
				}
				if grp != nil {
					p("group", fmt.Sprintf("%s (member %d of %d)", grp.ID, r.Member, grp.Size))
					for _, k := range slices.Sorted(maps.Keys(r.Variations)) {
						p("variation", k+"="+r.Variations[k])
					}
					printVerdict(p, grp)
				}
			})
		},
	}
	return cmd
}

// newRunObserveCmd builds `kiln run observe`.
func newRunObserveCmd(g *globals) *cobra.Command {
	var latest string
	cmd := &cobra.Command{
		Use:   "observe RUN | --latest JOB",
		Short: "Follow a run's console live; exits with the job's exit code",
		Long: `Follow a run's console as it is written, from its start, until the run ends;
then exit with the job's own exit code (124 for a timeout, 128+N for signal N,
130 for a cancelled run, 1 for a run lost with its hosts), or 3 when the job
succeeded but a host check (post or cleanup hook) failed, like kiln exec. Any number of
observers may follow a run; a slow one never loses output.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if (latest == "") == (len(args) == 1) && len(args) <= 1 {
				return nil
			}
			return errors.New("give a RUN or --latest JOB")
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			id := ""
			if len(args) == 1 {
				id = args[0]
			} else {
				runs, err := c.ListRuns(cmd.Context(), latest, 1)
				if err != nil {
					return err
				}
				if len(runs) == 0 {
					return fmt.Errorf("job %q has no runs", latest)
				}
				id = runs[0].ID
			}
			r, err := c.FollowLog(cmd.Context(), id, cmd.OutOrStdout())
			if err != nil {
				return err
			}
			if err := runExit(r); err != nil {
				return err
			}
			// FollowLog's run may predate the stored result's checks.
			if r, err = c.GetRun(cmd.Context(), id); err != nil {
				return err
			}
			return checksExit(r, cmd.ErrOrStderr())
		},
	}
	cmd.Flags().StringVar(&latest, "latest", "", "follow the newest run of this job")
	return cmd
}

// newRunCancelCmd builds `kiln run cancel`.
func newRunCancelCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cancel RUN",
		Short: "Cancel a run (a queued one at once, a running one through its host)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			r, err := c.CancelRun(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if !api.Terminal(r.State) {
				fmt.Fprintf(cmd.ErrOrStderr(), "run %s: cancel sent to host %s\n", r.ID, r.Host)
			}
			return nil
		},
	}
	return cmd
}

// checksExit is exitCheckFailed, naming the failed checks on w, when the
// succeeded run r has any.
func checksExit(r *api.Run, w io.Writer) error {
	n := 0
	for _, c := range r.Checks {
		if c.Failed() {
			fmt.Fprintf(w, "kiln: check %s (%s) failed: %s\n", c.Name, c.Stage, c.Error)
			n++
		}
	}
	if n > 0 {
		return &exitError{code: exitCheckFailed, msg: fmt.Sprintf("run %s: job succeeded, %d check(s) failed", r.ID, n)}
	}
	return nil
}

// runExit turns a finished run into the process exit of `observe`.
func runExit(r *api.Run) error {
	code := 0
	if r.ExitCode != nil {
		code = *r.ExitCode
	}
	switch r.State {
	case api.StateSucceeded:
		return nil
	case api.StateTimedOut:
		return &exitError{code: 124, msg: fmt.Sprintf("run %s timed out", r.ID)}
	case api.StateCancelled:
		return &exitError{code: 130, msg: fmt.Sprintf("run %s was cancelled", r.ID)}
	case api.StateFailed:
		if r.Signal != "" {
			return &exitError{code: 128 + signalNumber(r.Signal), msg: fmt.Sprintf("run %s killed by signal %s", r.ID, r.Signal)}
		}
		if code == 0 {
			code = 1
		}
		msg := fmt.Sprintf("run %s failed with exit code %d", r.ID, code)
		if r.Error != "" {
			msg += ": " + r.Error
		}
		return &exitError{code: code, msg: msg}
	}
	return &exitError{code: 1, msg: fmt.Sprintf("run %s ended %s: %s", r.ID, r.State, r.Error)}
}

func signalNumber(s string) int {
	names := map[string]int{"HUP": 1, "INT": 2, "QUIT": 3, "ILL": 4, "TRAP": 5, "ABRT": 6, "BUS": 7, "FPE": 8, "KILL": 9,
		"USR1": 10, "SEGV": 11, "USR2": 12, "PIPE": 13, "ALRM": 14, "TERM": 15}
	s = strings.TrimPrefix(strings.ToUpper(s), "SIG")
	if n, ok := names[s]; ok {
		return n
	}
	var n int
	if _, err := fmt.Sscan(s, &n); err == nil && n > 0 && n < 128 {
		return n
	}
	return 0
}
