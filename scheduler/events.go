package scheduler

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/config"
)

// Outgoing events (docs/webhooks.md). Every notify_tick:
//
//   - the leader's pass looks at the runs that finished since the stored
//     mark (up to eventSettle ago, so that a run whose end is being
//     committed is not passed over) and stores one outbox row per event
//     and target, [[notify]] of server.toml and of the run's job
//     revision, then moves the mark: the event is in the database before
//     anything is sent, and a server killed at any point finds it there
//     (or finds the mark not moved, and stores it again: rows are unique
//     by run, url and event);
//   - every replica claims due rows with a lease (one sender at a time)
//     and POSTs them: JSON signed with HMAC-SHA256, a timeout per
//     request, no redirect followed, no proxy, and no link-local or
//     metadata address dialled (checked on the resolved address, at
//     connect). A failure is tried again after notify_backoff, doubling
//     up to notify_backoff_max, until notify_retry_for after the event;
//     a redirect or a secret gone from server.toml fails at once.

const (
	eventSettle = 2 * time.Second
	eventBatch  = 500 // finished runs per pass
	eventSends  = 16  // deliveries claimed per tick
)

// errRefusedAddr refuses to dial an address NotifyAddrRefused names.
var errRefusedAddr = errors.New("notify: refused address")

// events is the server's outgoing event sender.
type events struct {
	client *http.Client
	owner  string // this replica, in the rows it leases
}

func (s *Server) initEvents() {
	timeout := time.Duration(s.cfg.NotifyTimeout)
	dialer := &net.Dialer{Timeout: timeout, Control: refuseDial}
	s.events = &events{
		owner: s.replica,
		client: &http.Client{
			Timeout: timeout,
			// Never follow a redirect, to any host: the receiver is the
			// URL configured, and a redirect to an internal address
			// would be a way around the address check.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
			Transport: &http.Transport{
				// No proxy: a proxy would dial for us, past refuseDial.
				Proxy:                 nil,
				DialContext:           dialer.DialContext,
				TLSHandshakeTimeout:   timeout,
				ResponseHeaderTimeout: timeout,
				MaxIdleConns:          16,
				IdleConnTimeout:       time.Minute,
			},
		},
	}
}

// refuseDial is the sender's Dialer.Control: it runs on the address a
// name resolved to, just before connecting, so that no name (nor a DNS
// answer that changed since the URL was checked) reaches a link-local or
// metadata address.
func refuseDial(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", errRefusedAddr, address, err)
	}
	if why := api.NotifyAddrRefused(ap.Addr()); why != "" {
		return fmt.Errorf("%w: %s is %s", errRefusedAddr, ap.Addr(), why)
	}
	return nil
}

// eventTick runs the leader's pass, then sends what is due.
func (s *Server) eventTick(ctx context.Context) error {
	var errs []error
	if s.leading() {
		errs = append(errs, s.eventPass(ctx))
	}
	errs = append(errs, s.sendEvents(ctx))
	return errors.Join(errs...)
}

// eventPass stores the events of the runs that finished since the mark.
func (s *Server) eventPass(ctx context.Context) error {
	now := s.now()
	mark, found, err := s.st.eventMark(ctx)
	if err != nil {
		return err
	}
	upTo := ns(now.Add(-eventSettle))
	if !found {
		// The first start with events: runs that ended before are
		// not announced.
		return s.st.queueEvents(ctx, nil, 0, upTo, true, now)
	}
	if upTo <= mark {
		return nil
	}
	fin, err := s.st.endedRuns(ctx, mark, upTo, eventBatch)
	if err != nil {
		return err
	}
	newMark := upTo
	if len(fin) == eventBatch {
		// More to come: the next pass starts at the last one's time
		// again (a row stored twice is stored once).
		newMark = max(mark+1, fin[len(fin)-1].finished-1)
	}
	var rows []outboxRow
	for _, f := range fin {
		rs, err := s.runEventRows(ctx, f, now)
		if err != nil {
			s.log.Error("events of a finished run", "run", f.id, "err", err)
			continue
		}
		rows = append(rows, rs...)
	}
	return s.st.queueEvents(ctx, rows, mark, newMark, false, now)
}

// eventTarget is a [[notify]] of the server or of a job.
type eventTarget struct {
	url       string
	events    []string
	secretRef string // "server:URL", "job:NAME", or "" (unsigned)
}

// runEvent is the event a run's final state makes.
func runEvent(state string) string {
	switch state {
	case api.StateSucceeded:
		return api.EventRunSucceeded
	case api.StateCancelled:
		return api.EventRunCancelled
	case api.StateSkipped:
		// Not run.failed: it never ran, a run it needed failed.
		return api.EventRunSkipped
	}
	return api.EventRunFailed // failed, timed out, lost
}

// runEventRows are the outbox rows of finished run f: its run event and,
// for the group's first member once the group is decided, the group's.
func (s *Server) runEventRows(ctx context.Context, f endedRun, now time.Time) ([]outboxRow, error) {
	targets := s.eventTargets(ctx, f.id, f.job, f.rev)
	if len(targets) == 0 {
		return nil, nil
	}
	type ev struct {
		name string
		run  int64
		body []byte
	}
	var evs []ev
	run, err := s.getRun(ctx, f.id)
	if err != nil {
		return nil, err
	}
	b, _ := json.Marshal(api.NotifyPayload{Event: runEvent(f.state), Server: s.id, Time: time.Unix(0, f.finished).UTC(), Run: run})
	evs = append(evs, ev{name: runEvent(f.state), run: f.id, body: b})
	if f.grp != 0 && f.verdict.Valid {
		var v api.Verdict
		if err := json.Unmarshal([]byte(f.verdict.String), &v); err == nil {
			b, _ := json.Marshal(api.NotifyPayload{Event: api.EventGroupVerdict, Server: s.id, Time: time.Unix(0, f.finished).UTC(), Group: itoa(f.grp), Verdict: &v})
			evs = append(evs, ev{name: api.EventGroupVerdict, run: f.firstID, body: b})
		}
	}
	deadline := ns(now.Add(time.Duration(s.cfg.NotifyRetryFor)))
	var rows []outboxRow
	for _, t := range targets {
		for _, e := range evs {
			if slices.Contains(t.events, e.name) {
				rows = append(rows, outboxRow{run: e.run, url: t.url, event: e.name, secretRef: t.secretRef, body: string(e.body), created: ns(now), deadline: deadline})
			}
		}
	}
	return rows, nil
}

// eventTargets are the receivers of the events of run id of job at
// revision rev: the server's [[notify]] and the job revision's.
func (s *Server) eventTargets(ctx context.Context, id int64, job string, rev int) []eventTarget {
	targets := make([]eventTarget, 0, len(s.cfg.Notify))
	for _, n := range s.cfg.Notify {
		targets = append(targets, eventTarget{url: n.URL, events: n.Events, secretRef: "server:" + n.URL})
	}
	j, err := s.jobSpec(ctx, job, rev)
	if err != nil {
		// The job's revision is gone (or unreadable): the server's
		// receivers still hear of the run.
		s.log.Warn("events of a run: its job's [[notify]] unread", "run", id, "job", job, "revision", rev, "err", err)
		j = &api.Job{}
	}
	for _, n := range j.Notify {
		ref := ""
		if n.Secret != "" {
			ref = "job:" + n.Secret
		}
		targets = append(targets, eventTarget{url: n.URL, events: n.Events, secretRef: ref})
	}
	return targets
}

// sendEvents claims the due deliveries and sends them, at once.
func (s *Server) sendEvents(ctx context.Context) error {
	now := s.now()
	timeout := time.Duration(s.cfg.NotifyTimeout)
	rows, err := s.st.claimEvents(ctx, s.events.owner, now, now.Add(2*timeout+5*time.Second), eventSends)
	if err != nil || len(rows) == 0 {
		return err
	}
	var wg sync.WaitGroup
	errs := make([]error, len(rows))
	for i, r := range rows {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.sendEvent(ctx, r)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// errPermanent marks a failure that trying again does not mend.
var errPermanent = errors.New("not tried again")

// sendEvent makes one try at delivery r and records it.
func (s *Server) sendEvent(ctx context.Context, r outboxRow) error {
	err := s.post(ctx, r)
	now := s.now()
	tries := r.tries + 1
	if err == nil {
		s.log.Info("event delivered", "run", r.run, "event", r.event, "url", r.url, "tries", tries)
		return s.st.eventTried(ctx, r.id, s.events.owner, api.NotifyDelivered, tries, "", now, now)
	}
	if ctx.Err() != nil {
		// The server is stopping: the try does not count; the lease
		// runs out and another sender (or this one, restarted) goes on.
		return nil
	}
	msg := err.Error()
	if len(msg) > 500 {
		msg = msg[:500]
	}
	backoff := min(time.Duration(s.cfg.NotifyBackoff)<<min(tries-1, 30), time.Duration(s.cfg.NotifyBackoffMax))
	next := now.Add(backoff)
	state := api.NotifyPending
	if errors.Is(err, errPermanent) || ns(next) > r.deadline {
		state = api.NotifyFailed
	}
	s.log.Warn("event not delivered", "run", r.run, "event", r.event, "url", r.url, "tries", tries, "state", state, "err", err)
	return s.st.eventTried(ctx, r.id, s.events.owner, state, tries, msg, next, now)
}

// post sends delivery r once.
func (s *Server) post(ctx context.Context, r outboxRow) error {
	secret, err := s.eventSecret(r.secretRef)
	if err != nil {
		return fmt.Errorf("%w: %v", errPermanent, err)
	}
	var p api.NotifyPayload
	if err := json.Unmarshal([]byte(r.body), &p); err != nil {
		return fmt.Errorf("%w: stored payload: %v", errPermanent, err)
	}
	p.Delivery = fmt.Sprintf("%s-%d", s.id, r.id)
	body, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("%w: %v", errPermanent, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.url, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("%w: %v", errPermanent, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "kiln")
	req.Header.Set(hdrKilnEvent, r.event)
	req.Header.Set(hdrKilnDelivery, p.Delivery)
	if secret != nil {
		req.Header.Set(hdrKilnSignature, signaturePrefix256+signHMAC(secret, body))
	}
	resp, err := s.events.client.Do(req)
	if err != nil {
		if errors.Is(err, errRefusedAddr) {
			return fmt.Errorf("%w: %v", errPermanent, err)
		}
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return nil
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		return fmt.Errorf("%w: answered %s to %q: redirects are not followed", errPermanent, resp.Status, resp.Header.Get("Location"))
	}
	return fmt.Errorf("answered %s", resp.Status)
}

// eventSecret is the secret of a delivery's reference (nil: unsigned).
func (s *Server) eventSecret(ref string) ([]byte, error) {
	kind, name, _ := strings.Cut(ref, ":")
	switch kind {
	case "":
		return nil, nil
	case "server":
		for _, n := range s.cfg.Notify {
			if n.URL == name {
				return config.ReadSecret(n.SecretFile, n.SecretEnv)
			}
		}
		return nil, fmt.Errorf("server.toml has no [[notify]] for %s any more", name)
	case "job":
		ns, ok := s.cfg.NotifySecrets[name]
		if !ok {
			return nil, fmt.Errorf("server.toml has no [notify_secrets.%s] any more", name)
		}
		return config.ReadSecret(ns.File, ns.Env)
	}
	return nil, fmt.Errorf("unknown secret reference %q", ref)
}

// checkNotify refuses a job whose [[notify]] names a secret the server
// does not have or does not give p's owner.
func (s *Server) checkNotify(p *principal, j *api.Job) error {
	for _, n := range j.Notify {
		if n.Secret == "" {
			continue
		}
		sec, ok := s.cfg.NotifySecrets[n.Secret]
		owner := ownerName(p.owner())
		if !ok || (p.kind != kindAdmin && !slices.Contains(sec.Owners, owner)) {
			return badRequest("notify %s: secret %q: no such notify secret for owner %s (server.toml [notify_secrets.%s] owners)", n.URL, n.Secret, owner, n.Secret)
		}
	}
	return nil
}

// runNotifications fills run's deliveries (GET /v1/runs/{id}).
func (s *Server) runNotifications(ctx context.Context, run *api.Run, id int64) error {
	ns, err := s.st.runEvents(ctx, id)
	run.Notifications = ns
	return err
}
