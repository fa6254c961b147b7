package main

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/kiln-build/kiln/api"
)

// exitNotReproducible is `kiln run group`'s exit code for a decided group
// that is not reproducible, so scripts can test the verdict.
const exitNotReproducible = 4

func newRunGroupCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "group GROUP",
		Short: "Show a reproduce group: its members and verdict (exit 4: not reproducible)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			grp, err := c.GetGroup(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			err = g.printList(cmd.OutOrStdout(), grp, func(tw *tabwriter.Writer) {
				p := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
				p("group", grp.ID)
				p("job", fmt.Sprintf("%s (revision %d)", grp.Job, grp.Revision))
				p("created", fmtTime(grp.Created))
				p("SOURCE_DATE_EPOCH", fmt.Sprint(grp.SourceDateEpoch))
				for _, m := range grp.Members {
					p(fmt.Sprintf("member %d", m.Member), fmt.Sprintf("run %s %s on %s", m.ID, m.State, orDash(m.Host)))
				}
				printVerdict(p, grp)
			})
			if err != nil {
				return err
			}
			if grp.Verdict != nil && !grp.Verdict.Reproducible {
				return &exitError{code: exitNotReproducible, msg: fmt.Sprintf("group %s is not reproducible", grp.ID)}
			}
			return nil
		},
	}
}

// printVerdict writes a group's verdict as "key: value" lines.
func printVerdict(p func(k, v string), grp *api.Group) {
	v := grp.Verdict
	if v == nil {
		p("verdict", "pending (not every member has ended)")
		return
	}
	word := "reproducible"
	if !v.Reproducible {
		word = "NOT reproducible"
	}
	if v.SameHost {
		word += " (same host: no distinct host was free)"
	}
	p("verdict", word)
	if len(v.Failed) > 0 {
		p("failed members", strings.Join(v.Failed, ", "))
	}
	for _, d := range v.Differs {
		p("differs", d)
	}
	for _, m := range v.Missing {
		p("missing", fmt.Sprintf("%s (not in run %s)", m.Path, strings.Join(m.MissingIn, ", ")))
	}
	if grp.Report != nil {
		p("diffoscope report", reportText(grp.Report))
	}
	for _, pb := range grp.Publications {
		p("group published", fmtPublication(pb))
	}
}

// reportText says where a group's diffoscope report is, or why not yet.
func reportText(r *api.GroupReport) string {
	switch {
	case r.Report != nil:
		return fmt.Sprintf("run %s vs %s: %s of run %s (%d bytes); kiln artifact get %s %s",
			r.RunA, r.RunB, r.Report.Path, r.Run, r.Report.Size, r.Run, r.Report.Path)
	case r.NoHost:
		return fmt.Sprintf("pending (no host defines a %s hook; task run %s)", api.DiffoscopeHook, r.Run)
	case r.State == api.StateQueued:
		return fmt.Sprintf("pending (task run %s queued)", r.Run)
	case !api.Terminal(r.State):
		return fmt.Sprintf("being made on %s (task run %s)", orDash(r.Host), r.Run)
	}
	// "failed: diffoscope hook (/usr/bin/diffoscope) failed: exit status 2 (task run 7)"
	return fmt.Sprintf("%s: %s (task run %s)", r.State, orDash(r.Error), r.Run)
}

func newRunCompareCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "compare RUN1 RUN2",
		Short: "Compare two runs: artifacts, variations, host facts, snapshot, revision, exit",
		Long: `Compare two runs of any jobs: their artifacts by path and sha256 (same,
differs, only in one), the variations they ran under, the facts of the hosts they
ran on (differences only), and job, revision, image snapshot, host, state and
exit (differences only). Exits 0 whatever the differences.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			a, err := c.GetRun(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			b, err := c.GetRun(cmd.Context(), args[1])
			if err != nil {
				return err
			}
			cmp := api.CompareRuns(a, b)
			return g.printList(cmd.OutOrStdout(), cmp, func(tw *tabwriter.Writer) {
				fmt.Fprintf(tw, "\tRUN %s\tRUN %s\n", a.ID, b.ID)
				for _, d := range cmp.Other {
					fmt.Fprintf(tw, "%s\t%s\t%s\n", d.Key, orDash(d.A), orDash(d.B))
				}
				same := "identical"
				if !cmp.Identical {
					same = "different"
				}
				fmt.Fprintf(tw, "artifacts\t%s\t\n", same)
				for _, d := range cmp.Artifacts {
					fmt.Fprintf(tw, "  %s\t%s\t%s\n", d.Path, short(d.SHA256A), short(d.SHA256B)+"  "+d.Status)
				}
				if len(cmp.Variations) > 0 {
					fmt.Fprintf(tw, "variations\t\t\n")
					for _, d := range cmp.Variations {
						fmt.Fprintf(tw, "  %s\t%s\t%s\n", d.Key, orDash(d.A), orDash(d.B))
					}
				}
				if len(cmp.HostFacts) > 0 {
					fmt.Fprintf(tw, "host facts that differ\t\t\n")
					for _, d := range cmp.HostFacts {
						fmt.Fprintf(tw, "  %s\t%s\t%s\n", d.Key, orDash(d.A), orDash(d.B))
					}
				}
			})
		},
	}
}

// short abbreviates a sha256 for tables; "-" for none.
func short(sha string) string {
	if len(sha) > 12 {
		return sha[:12]
	}
	return orDash(sha)
}
