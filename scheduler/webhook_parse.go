package scheduler

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/kiln-build/kiln/api"
)

// What a webhook request carries, checked before anything is stored or
// run: these functions take the request's headers and its (bounded) body
// and touch nothing else, so that the fuzz target covers them whole.

// errUnsigned and errBadSignature refuse a request with 401; errNoDelivery
// and errBadEvent with 400.
var (
	errUnsigned     = errors.New("the request is not signed")
	errBadSignature = errors.New("the signature does not match the hook's secret")
	errNoDelivery   = errors.New("no valid delivery id")
	errBadEvent     = errors.New("malformed event")
)

// Headers of each format.
const (
	hdrHubSignature    = "X-Hub-Signature-256"
	hdrGiteaSignature  = "X-Gitea-Signature"
	hdrGitLabToken     = "X-Gitlab-Token" //nolint:gosec // G101: a header's name, no secret
	hdrKilnSignature   = "X-Kiln-Signature-256"
	hdrGitHubDelivery  = "X-GitHub-Delivery"
	hdrGiteaDelivery   = "X-Gitea-Delivery"
	hdrGitLabDelivery  = "X-Gitlab-Event-UUID"
	hdrKilnDelivery    = "X-Kiln-Delivery"
	hdrGitHubEvent     = "X-GitHub-Event"
	hdrGiteaEvent      = "X-Gitea-Event"
	hdrGitLabEvent     = "X-Gitlab-Event"
	hdrKilnEvent       = "X-Kiln-Event"
	signaturePrefix256 = "sha256="
)

var (
	deliveryRe = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,128}$`)
	commitRe   = regexp.MustCompile(`^([0-9a-f]{40}|[0-9a-f]{64})$`)
)

// hookEvent is what a delivery asks: its id and, unless ignored says why
// it runs nothing, the push it reports.
type hookEvent struct {
	delivery   string
	event      string // "push" or "tag_push"
	repository string
	cloneURL   string
	ref        string
	commit     string
	ignored    string
}

// signHMAC is the hex HMAC-SHA256 of body under secret.
func signHMAC(secret, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return hex.EncodeToString(m.Sum(nil))
}

// verifyDelivery checks that a request of format was made by a holder of
// secret: an HMAC-SHA256 over the raw body (github, gitea, generic) or the
// secret itself as a token (gitlab), compared in constant time.
func verifyDelivery(format string, secret []byte, h http.Header, body []byte) error {
	switch format {
	case api.WebhookGitLab:
		tok := h.Get(hdrGitLabToken)
		if tok == "" {
			return errUnsigned
		}
		// Compare digests, so that the time taken does not depend on
		// the secret's length either.
		a, b := sha256.Sum256([]byte(tok)), sha256.Sum256(secret)
		if !hmac.Equal(a[:], b[:]) {
			return errBadSignature
		}
		return nil
	case api.WebhookGitHub, api.WebhookGitea, api.WebhookGeneric:
		hdr := hdrHubSignature
		if format == api.WebhookGeneric {
			hdr = hdrKilnSignature
		}
		sig, prefixed := strings.CutPrefix(h.Get(hdr), signaturePrefix256)
		if !prefixed && format == api.WebhookGitea && h.Get(hdr) == "" {
			// Gitea's own header: the bare hex digest.
			sig, prefixed = h.Get(hdrGiteaSignature), true
		}
		if sig == "" {
			return errUnsigned
		}
		got, err := hex.DecodeString(sig)
		if !prefixed || err != nil {
			return errBadSignature
		}
		m := hmac.New(sha256.New, secret)
		m.Write(body)
		if !hmac.Equal(got, m.Sum(nil)) {
			return errBadSignature
		}
		return nil
	}
	return fmt.Errorf("unknown webhook format %q", format)
}

// parseDelivery reads a verified request's delivery id and event.
func parseDelivery(format string, h http.Header, body []byte) (hookEvent, error) {
	var ev hookEvent
	var kind string
	switch format {
	case api.WebhookGitHub:
		ev.delivery, kind = h.Get(hdrGitHubDelivery), h.Get(hdrGitHubEvent)
	case api.WebhookGitea:
		ev.delivery, kind = h.Get(hdrGiteaDelivery), h.Get(hdrGiteaEvent)
	case api.WebhookGitLab:
		ev.delivery, kind = h.Get(hdrGitLabDelivery), h.Get(hdrGitLabEvent)
	case api.WebhookGeneric:
		ev.delivery, kind = h.Get(hdrKilnDelivery), h.Get(hdrKilnEvent)
	default:
		return ev, fmt.Errorf("unknown webhook format %q", format)
	}
	if !deliveryRe.MatchString(ev.delivery) {
		return ev, fmt.Errorf("%w: want 1 to 128 of A-Z a-z 0-9 . _ : - in the delivery header", errNoDelivery)
	}
	switch {
	case format == api.WebhookGitLab && kind == "Push Hook", format != api.WebhookGitLab && kind == "push",
		format == api.WebhookGeneric && kind == "":
		ev.event = "push"
	case format == api.WebhookGitLab && kind == "Tag Push Hook":
		ev.event = "tag_push"
	case kind == "ping":
		ev.ignored = "ping"
		return ev, nil
	default:
		ev.ignored = fmt.Sprintf("event %.64q (only pushes run the job)", kind)
		return ev, nil
	}
	var p struct {
		Ref     string `json:"ref"`
		After   string `json:"after"`
		Deleted bool   `json:"deleted"`
		// GitLab
		CheckoutSHA *string `json:"checkout_sha"`
		Project     struct {
			Path    string `json:"path_with_namespace"`
			HTTPURL string `json:"git_http_url"`
		} `json:"project"`
		// GitHub, Gitea
		Repository struct {
			FullName string `json:"full_name"`
			CloneURL string `json:"clone_url"`
		} `json:"repository"`
	}
	var g struct {
		Repository string `json:"repository"`
		CloneURL   string `json:"clone_url"`
		Ref        string `json:"ref"`
		Commit     string `json:"commit"`
	}
	var err error
	if format == api.WebhookGeneric {
		err = json.Unmarshal(body, &g)
		ev.repository, ev.cloneURL, ev.ref, ev.commit = g.Repository, g.CloneURL, g.Ref, g.Commit
	} else {
		err = json.Unmarshal(body, &p)
		ev.ref, ev.commit = p.Ref, p.After
		ev.repository, ev.cloneURL = p.Repository.FullName, p.Repository.CloneURL
		if format == api.WebhookGitLab {
			ev.repository, ev.cloneURL = p.Project.Path, p.Project.HTTPURL
			if p.CheckoutSHA != nil {
				ev.commit = *p.CheckoutSHA
			}
		}
	}
	if err != nil {
		return ev, fmt.Errorf("%w: %.200v", errBadEvent, err)
	}
	if strings.HasPrefix(ev.ref, "refs/tags/") && ev.event == "push" {
		ev.event = "tag_push"
	}
	if p.Deleted || ev.commit == strings.Repeat("0", 40) || (format == api.WebhookGitLab && p.CheckoutSHA == nil) {
		ev.ignored = "a deleted ref"
		return ev, nil
	}
	for _, f := range []struct{ name, v string }{{"repository", ev.repository}, {"clone url", ev.cloneURL}, {"ref", ev.ref}, {"commit", ev.commit}} {
		if err := checkEnvValue(f.v); err != nil {
			return ev, fmt.Errorf("%w: %s: %v", errBadEvent, f.name, err)
		}
	}
	switch {
	case ev.repository == "":
		return ev, fmt.Errorf("%w: no repository", errBadEvent)
	case !strings.HasPrefix(ev.ref, "refs/"):
		return ev, fmt.Errorf("%w: ref %.80q does not start with refs/", errBadEvent, ev.ref)
	case !commitRe.MatchString(ev.commit):
		return ev, fmt.Errorf("%w: commit %.80q is not 40 or 64 lowercase hex digits", errBadEvent, ev.commit)
	}
	return ev, nil
}

// checkEnvValue refuses what must not reach a run's environment: invalid
// UTF-8, control characters (a newline, a NUL), more than
// api.MaxWebhookValue bytes.
func checkEnvValue(v string) error {
	if len(v) > api.MaxWebhookValue {
		return fmt.Errorf("longer than %d bytes", api.MaxWebhookValue)
	}
	if !utf8.ValidString(v) {
		return errors.New("not valid UTF-8")
	}
	for _, r := range v {
		if unicode.IsControl(r) {
			return fmt.Errorf("control character %U", r)
		}
	}
	return nil
}

// env is the environment the event gives its run.
func (ev hookEvent) env(hook string) map[string]string {
	return map[string]string{
		api.EnvWebhookName:       hook,
		api.EnvWebhookEvent:      ev.event,
		api.EnvWebhookDelivery:   ev.delivery,
		api.EnvWebhookRepository: ev.repository,
		api.EnvWebhookCloneURL:   ev.cloneURL,
		api.EnvWebhookRef:        ev.ref,
		api.EnvWebhookCommit:     ev.commit,
	}
}
