package main

import (
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/kiln-build/kiln/api"
)

func newWebhookCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "webhook",
		Short: "Create, list and remove webhooks that execute a job on a git push",
		Long: `A webhook executes a job when a forge (GitHub, Gitea, GitLab, or anything that
signs its requests like kiln's generic format) POSTs a push event to
<server>/v1/webhooks/NAME. The request carries no token: the hook's secret is
the credential (an HMAC-SHA256 signature of the body, or GitLab's token
header). The run gets the event's repository, ref and commit in its
environment (WEBHOOK_REPOSITORY, WEBHOOK_CLONE_URL, WEBHOOK_REF,
WEBHOOK_COMMIT, WEBHOOK_EVENT, WEBHOOK_DELIVERY, WEBHOOK_NAME), runs as the
owner of the token that made the hook, and a delivery id seen before runs
nothing. See docs/webhooks.md.`,
	}
	var job, secretFile, format string
	create := &cobra.Command{
		Use:   "create NAME --job JOB [--secret-from FILE] [--format github|gitea|gitlab|generic]",
		Short: "Create a webhook; prints its URL (and its secret when the server chose it, shown only once)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			req := api.WebhookRequest{Name: args[0], Job: job, Format: format}
			if secretFile != "" {
				b, err := os.ReadFile(secretFile)
				if err != nil {
					return fmt.Errorf("--secret-from: %w", err)
				}
				// A file written by echo ends with a newline that the
				// forge's secret field does not have.
				req.Secret = strings.TrimRight(string(b), "\r\n")
			}
			h, err := c.CreateWebhook(cmd.Context(), req)
			if err != nil {
				return err
			}
			if g.output == "json" {
				return g.printList(cmd.OutOrStdout(), h, nil)
			}
			base, _, _ := strings.Cut(c.BaseURL, ",")
			fmt.Fprintf(cmd.OutOrStdout(), "url: %s%s\nformat: %s\n", base, h.Path, h.Format)
			if h.Secret != "" {
				fmt.Fprintf(cmd.OutOrStdout(), "secret: %s\n", h.Secret)
			}
			return nil
		},
	}
	create.Flags().StringVar(&job, "job", "", "the job a push executes (required)")
	create.Flags().StringVar(&secretFile, "secret-from", "", "read the secret from FILE (16 to 512 bytes; a trailing newline is dropped); default: the server makes one and prints it once")
	create.Flags().StringVar(&format, "format", api.WebhookGitHub, "how requests are signed and read: github, gitea, gitlab or generic")
	_ = create.MarkFlagRequired("job")

	list := &cobra.Command{
		Use:   "list",
		Short: "List the webhooks the token sees (never their secrets)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			hs, err := c.ListWebhooks(cmd.Context())
			if err != nil {
				return err
			}
			return g.printList(cmd.OutOrStdout(), hs, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "NAME\tJOB\tFORMAT\tOWNER\tACCEPTED\tREFUSED\tLAST RUN\tCREATED")
				for _, h := range hs {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\n", h.Name, h.Job, h.Format, orDash(h.Owner), h.Accepted, h.Refused, orDash(h.LastRun), fmtTime(h.Created))
				}
			})
		},
	}
	rm := &cobra.Command{
		Use:   "rm NAME",
		Short: "Remove a webhook; its deliveries are answered 404 from then on",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			return c.RemoveWebhook(cmd.Context(), args[0])
		},
	}
	cmd.AddCommand(create, list, rm)
	return cmd
}

// notificationLine is a run's delivery as `kiln run info` shows it:
// "https://x (run.failed): delivered", "... failed after 5 tries: ...".
func notificationLine(n api.Notification) string {
	head := fmt.Sprintf("%s (%s): ", n.URL, n.Event)
	switch n.State {
	case api.NotifyDelivered:
		return head + "delivered"
	case api.NotifyFailed:
		return head + fmt.Sprintf("failed after %d tries: %s", n.Tries, n.LastError)
	}
	if n.Tries == 0 {
		return head + "pending"
	}
	return head + fmt.Sprintf("pending, %d tries so far (last: %s), next at %s", n.Tries, n.LastError, fmtTime(n.NextTry))
}
