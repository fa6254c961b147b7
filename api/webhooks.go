package api

import (
	"context"
	"time"
)

// Webhook formats (docs/webhooks.md): how a request to POST
// /v1/webhooks/{name} is authenticated, where its delivery id is and how
// its event is read.
const (
	WebhookGitHub  = "github"  // X-Hub-Signature-256, X-GitHub-Delivery, X-GitHub-Event
	WebhookGitea   = "gitea"   // X-Hub-Signature-256 (or X-Gitea-Signature), X-Gitea-Delivery, X-Gitea-Event
	WebhookGitLab  = "gitlab"  // X-Gitlab-Token, X-Gitlab-Event-UUID, X-Gitlab-Event
	WebhookGeneric = "generic" // X-Kiln-Signature-256, X-Kiln-Delivery, a JSON body {repository, ref, commit}
)

// WebhookFormats lists the formats a webhook may have.
var WebhookFormats = []string{WebhookGitHub, WebhookGitea, WebhookGitLab, WebhookGeneric}

// The environment variables a webhook's run gets on top of its job's env
// (they replace a job's own variable of the same name). Their values are
// checked by the server: valid UTF-8, no control character (so no newline
// nor NUL), at most MaxWebhookValue bytes; a commit is 40 or 64 lowercase
// hex digits.
const (
	EnvWebhookName       = "WEBHOOK_NAME"       // the hook's name
	EnvWebhookEvent      = "WEBHOOK_EVENT"      // "push" or "tag_push"
	EnvWebhookDelivery   = "WEBHOOK_DELIVERY"   // the sender's delivery id
	EnvWebhookRepository = "WEBHOOK_REPOSITORY" // "owner/name" as the forge names it
	EnvWebhookCloneURL   = "WEBHOOK_CLONE_URL"  // the repository's http(s) clone URL ("" when the event has none)
	EnvWebhookRef        = "WEBHOOK_REF"        // "refs/heads/main", "refs/tags/v1"
	EnvWebhookCommit     = "WEBHOOK_COMMIT"     // the commit the ref points to after the push
)

// MaxWebhookValue bounds one value a webhook puts in a run's environment.
const MaxWebhookValue = 1024

// WebhookRequest is the body of POST /v1/webhooks: make hook Name, which
// executes Job. An empty Secret makes the server choose one, returned
// once in Webhook.Secret.
type WebhookRequest struct {
	Name   string `json:"name"`
	Job    string `json:"job"`
	Format string `json:"format,omitempty"` // default "github"
	Secret string `json:"secret,omitempty"`
}

// Webhook is a stored hook (its secret is never shown again).
type Webhook struct {
	Name    string    `json:"name"`
	Job     string    `json:"job"`
	Format  string    `json:"format"`
	Path    string    `json:"path"` // "/v1/webhooks/NAME": POST here, on the server's URL
	Created time.Time `json:"created"`
	// Secret is set only in the answer to the create that chose it.
	Secret string `json:"secret,omitempty"`
	// Accepted counts deliveries that queued runs, Refused those answered
	// 401 (a missing or wrong signature or token).
	Accepted int64  `json:"accepted"`
	Refused  int64  `json:"refused"`
	LastRun  string `json:"last_run,omitempty"`
	Owner    string `json:"owner,omitempty"`
}

// WebhookDelivery is the answer to a delivery: the run it queued (or, for
// a replay, the run the first delivery queued: Duplicate), or why it ran
// nothing (Ignored: an event kiln does not run jobs on).
type WebhookDelivery struct {
	Run       string `json:"run,omitempty"`
	Duplicate bool   `json:"duplicate,omitempty"`
	Ignored   string `json:"ignored,omitempty"`
}

// Notification is the state of one outgoing event of a run (GET
// /v1/runs/{id}): State is "pending", "delivered" or "failed".
type Notification struct {
	URL       string    `json:"url"`
	Event     string    `json:"event"`
	State     string    `json:"state"`
	Tries     int       `json:"tries"`
	LastError string    `json:"last_error,omitempty"`
	NextTry   time.Time `json:"next_try,omitzero"`
	Done      time.Time `json:"done,omitzero"`
}

// Notification states.
const (
	NotifyPending   = "pending"
	NotifyDelivered = "delivered"
	NotifyFailed    = "failed"
)

// Notify events (docs/webhooks.md).
const (
	EventRunSucceeded = "run.succeeded"
	EventRunFailed    = "run.failed"  // failed, timed out or lost
	EventRunSkipped   = "run.skipped" // a need failed: never ran
	EventRunCancelled = "run.cancelled"
	EventGroupVerdict = "group.verdict"
	EventPublishDone  = "publish.done" // a run's packages were published (or not) into a repository
)

// NotifyEvents lists the events a [[notify]] may name.
var NotifyEvents = []string{EventRunSucceeded, EventRunFailed, EventRunCancelled, EventGroupVerdict, EventPublishDone, EventRunSkipped}

// NotifyPayload is the JSON body of an outgoing event, signed with
// HMAC-SHA256 in X-Kiln-Signature-256 ("sha256=" and the hex digest of
// the body).
type NotifyPayload struct {
	Delivery string    `json:"delivery"` // also X-Kiln-Delivery; the same on every try
	Event    string    `json:"event"`    // also X-Kiln-Event
	Server   string    `json:"server"`   // the server's identity
	Time     time.Time `json:"time"`     // when the event happened
	Run      *Run      `json:"run,omitempty"`
	Group    string    `json:"group,omitempty"`
	Verdict  *Verdict  `json:"verdict,omitempty"`
	// Publication is publish.done's: the repository, the packages and
	// the outcome (new, unchanged, refused, failed).
	Publication *Publication `json:"publication,omitempty"`
}

// CreateWebhook makes a webhook.
func (c *Client) CreateWebhook(ctx context.Context, req WebhookRequest) (*Webhook, error) {
	var out Webhook
	_, err := c.do(ctx, "POST", "/v1/webhooks", nil, req, &out)
	return &out, err
}

// ListWebhooks lists the webhooks the token sees.
func (c *Client) ListWebhooks(ctx context.Context) ([]Webhook, error) {
	var out []Webhook
	_, err := c.do(ctx, "GET", "/v1/webhooks", nil, nil, &out)
	return out, err
}

// RemoveWebhook removes a webhook; deliveries to it are answered 404.
func (c *Client) RemoveWebhook(ctx context.Context, name string) error {
	_, err := c.do(ctx, "DELETE", "/v1/webhooks/"+esc(name), nil, nil, nil)
	return err
}
