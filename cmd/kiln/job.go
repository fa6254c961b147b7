package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/BurntSushi/toml"
	"github.com/spf13/cobra"

	"github.com/kiln-build/kiln/api"
)

func newJobCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "job",
		Short: "Add, change, run and schedule jobs on the server",
	}
	cmd.AddCommand(newJobAddCmd(g), newJobModifyCmd(g), newJobRmCmd(g), newJobListCmd(g), newJobInfoCmd(g), newJobExecuteCmd(g), newJobScheduleCmd(g), newJobUnscheduleCmd(g), newJobTemplateCmd())
	return cmd
}

// newJobAddCmd builds `kiln job add`.
func newJobAddCmd(g *globals) *cobra.Command {
	var inputs []string
	cmd := &cobra.Command{
		Use:   "add FILE",
		Short: "Store a new job from a job file; prints the job name",
		Long: `Store a new job from a TOML job file. Each --input FILE is uploaded (stored by
sha256, once) and fills the [[inputs]] entry whose path has the same base name,
or adds an entry for it. Inputs named in the file with a sha256 only must have
been uploaded before.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			j, err := loadJobFile(cmd, c, args[0], inputs)
			if err != nil {
				return err
			}
			ji, err := c.AddJob(cmd.Context(), j)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), ji.Job.Name)
			return nil
		},
	}
	cmd.Flags().StringArrayVar(&inputs, "input", nil, "input file to upload (repeatable)")
	return cmd
}

// newJobModifyCmd builds `kiln job modify`.
func newJobModifyCmd(g *globals) *cobra.Command {
	var modInputs []string
	cmd := &cobra.Command{
		Use:   "modify NAME FILE",
		Short: "Store a new revision of a job; prints the revision",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			j, err := loadJobFile(cmd, c, args[1], modInputs)
			if err != nil {
				return err
			}
			ji, err := c.ModifyJob(cmd.Context(), args[0], j)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), ji.Revision)
			return nil
		},
	}
	cmd.Flags().StringArrayVar(&modInputs, "input", nil, "input file to upload (repeatable)")
	cmd.ValidArgsFunction = completeJobNames(g)
	return cmd
}

// newJobRmCmd builds `kiln job rm`.
func newJobRmCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rm NAME",
		Short: "Remove a job (its queued runs are cancelled; past runs stay)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			return c.RemoveJob(cmd.Context(), args[0])
		},
	}
	cmd.ValidArgsFunction = completeJobNames(g)
	return cmd
}

// newJobListCmd builds `kiln job list`.
func newJobListCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List jobs",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			js, err := c.ListJobs(cmd.Context())
			if err != nil {
				return err
			}
			return g.printList(cmd.OutOrStdout(), js, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "NAME\tREV\tIMAGE\tARCH\tSCHEDULE\tNEXT")
				for _, j := range js {
					fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\n", j.Job.Name, j.Revision, j.Job.Image, orDash(j.Job.Arch), orDash(j.Schedule), fmtTime(j.NextFire))
				}
			})
		},
	}
	return cmd
}

// newJobInfoCmd builds `kiln job info`.
func newJobInfoCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "info NAME",
		Short: "Show a job",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ji, err := c.GetJob(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if g.output == "json" {
				return g.printList(cmd.OutOrStdout(), ji, nil)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "# revision %d, updated %s", ji.Revision, fmtTime(ji.Updated))
			if ji.Schedule != "" {
				fmt.Fprintf(w, ", next run %s", fmtTime(ji.NextFire))
			}
			fmt.Fprintln(w)
			var buf bytes.Buffer
			if err := toml.NewEncoder(&buf).Encode(ji.Job); err != nil {
				return err
			}
			// Zero values the encoder cannot omit would not parse back.
			for _, l := range strings.SplitAfter(buf.String(), "\n") {
				if l != "timeout = \"0s\"\n" && l != "reproduce = 0\n" {
					_, _ = io.WriteString(w, l)
				}
			}
			return nil
		},
	}
	cmd.ValidArgsFunction = completeJobNames(g)
	return cmd
}

// newJobExecuteCmd builds `kiln job execute`.
func newJobExecuteCmd(g *globals) *cobra.Command {
	var reproduce, priority int
	var reuse bool
	cmd := &cobra.Command{
		Use:   "execute NAME [--reproduce N] [--priority N] [--reuse]",
		Short: "Queue a run of a job now; prints the run ID (or the group ID)",
		Long: `Queue a run of a job now and print its ID. With --reproduce N (N >= 2), or
when the job file says reproduce = N, queue a reproduce group instead: N runs on
distinct hosts where possible, each with varied TZ, locale, umask, uid, build
path and hostname and the same SOURCE_DATE_EPOCH; print the group ID. See the
members with 'kiln run list --group G' and the verdict with 'kiln run group G'.

--priority N replaces the job's priority (priority = N in the job file, default
0) for the runs queued: higher runs first among the runs of the job's owner,
never ahead of another owner's (the server shares the hosts fairly between
owners). Above the server's priority_ceiling only an admin token may.

A job with [[needs]] executes its graph: each job it needs is satisfied by its
latest successful run whose key matches (job revision, inputs, image, and the
keys of what that job needs), or else run first; the job's run waits
(dep-wait) until they succeeded and is skipped if one fails. The run ID is
printed at once; stderr says what it waits for.

--reuse answers with the job's latest successful run whose key matches instead
of running anything: stdout has that run's ID and stderr says "reused run N".
Without such a run it executes as without --reuse.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			if reproduce == 1 || reproduce < 0 {
				return errors.New("--reproduce: want at least 2")
			}
			req := api.ExecuteRequest{Reproduce: reproduce, Reuse: reuse}
			if cmd.Flags().Changed("priority") {
				req.Priority = &priority
			}
			r, err := c.ExecuteJobWith(cmd.Context(), args[0], req)
			if err != nil {
				return err
			}
			if r.Group != "" {
				fmt.Fprintln(cmd.OutOrStdout(), r.Group)
				return nil
			}
			switch {
			case r.Reused:
				fmt.Fprintf(cmd.ErrOrStderr(), "reused run %s (%s, key %.12s)\n", r.ID, r.State, r.Key)
			case r.State == api.StateDepWait:
				fmt.Fprintln(cmd.ErrOrStderr(), r.Waiting)
			}
			fmt.Fprintln(cmd.OutOrStdout(), r.ID)
			return nil
		},
	}
	cmd.Flags().BoolVar(&reuse, "reuse", false, "answer with an existing successful run whose key matches, if any, running nothing")
	cmd.Flags().IntVar(&reproduce, "reproduce", 0, "run N times on distinct hosts under varied environment and compare (N >= 2)")
	cmd.Flags().IntVar(&priority, "priority", 0, "order among the owner's runs, higher first (default: the job's priority)")
	cmd.ValidArgsFunction = completeJobNames(g)
	return cmd
}

// newJobScheduleCmd builds `kiln job schedule`.
func newJobScheduleCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "schedule NAME SPEC",
		Short: `Run a job on a schedule: 5 cron fields (UTC), @hourly, @daily, @weekly or "@every 10m"`,
		Long: `Run a job on a schedule: a 5-field cron expression (minute hour day-of-month
month day-of-week, UTC), @hourly, @daily, @weekly, or "@every DURATION". After a
server downtime a missed schedule fires once, not once per missed period.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ji, err := c.ScheduleJob(cmd.Context(), args[0], args[1])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "next run %s\n", fmtTime(ji.NextFire))
			return nil
		},
	}
	cmd.ValidArgsFunction = completeJobNames(g)
	return cmd
}

// newJobUnscheduleCmd builds `kiln job unschedule`.
func newJobUnscheduleCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "unschedule NAME",
		Short: "Stop running a job on a schedule",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			_, err = c.UnscheduleJob(cmd.Context(), args[0])
			return err
		},
	}
	cmd.ValidArgsFunction = completeJobNames(g)
	return cmd
}

// completeJobNames completes the first argument with the server's job
// names when a server and token are configured.
func completeJobNames(g *globals) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return func(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
		if len(args) > 0 {
			return nil, cobra.ShellCompDirectiveDefault
		}
		c, err := g.client()
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		js, err := c.ListJobs(cmd.Context())
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var names []string
		for _, j := range js {
			names = append(names, j.Job.Name)
		}
		return names, cobra.ShellCompDirectiveNoFileComp
	}
}

// loadJobFile parses a job file, fills its inputs from the --input files
// and uploads them.
func loadJobFile(cmd *cobra.Command, c *api.Client, file string, inputs []string) (*api.Job, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	j, err := parseJobWithInputs(data, inputs)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	for _, in := range inputs {
		if _, err := c.UploadFile(cmd.Context(), in); err != nil {
			return nil, fmt.Errorf("upload %s: %w", in, err)
		}
	}
	return j, nil
}

// parseJobWithInputs is api.ParseJobFile, except that [[inputs]] entries
// may leave sha256 out when an --input file of the same base name fills it.
func parseJobWithInputs(data []byte, inputs []string) (*api.Job, error) {
	if len(inputs) == 0 {
		return api.ParseJobFile(data)
	}
	var j api.Job
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&j)
	if err != nil || len(md.Undecoded()) > 0 {
		_, perr := api.ParseJobFile(data)
		return nil, perr
	}
	for _, f := range inputs {
		sha, _, err := api.HashFile(f)
		if err != nil {
			return nil, err
		}
		base := filepath.Base(f)
		found := false
		for i := range j.Inputs {
			if path.Base(j.Inputs[i].Path) != base {
				continue
			}
			if j.Inputs[i].SHA256 != "" && j.Inputs[i].SHA256 != sha {
				return nil, fmt.Errorf("input %q: file %s has sha256 %s, the job file says %s", j.Inputs[i].Path, f, sha, j.Inputs[i].SHA256)
			}
			j.Inputs[i].SHA256, found = sha, true
		}
		if !found {
			if strings.ContainsAny(base, "\x00") {
				return nil, fmt.Errorf("input %s: bad name", f)
			}
			j.Inputs = append(j.Inputs, api.Input{Path: base, SHA256: sha})
		}
	}
	if err := j.Validate(); err != nil {
		return nil, err
	}
	return &j, nil
}
