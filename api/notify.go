package api

import (
	"fmt"
	"net/netip"
	"net/url"
	"slices"
	"strings"
)

// Notify is a [[notify]] of a job file: where the server POSTs the job's
// run events (docs/webhooks.md). Secret names one of the server's
// [notify_secrets] (an owner may use only those the server gives it);
// empty sends the events unsigned.
type Notify struct {
	URL    string   `toml:"url" json:"url"`
	Events []string `toml:"events" json:"events"`
	Secret string   `toml:"secret,omitempty" json:"secret,omitempty"`
}

// MaxNotifies bounds a job's [[notify]] entries, MaxNotifyURL a URL.
const (
	MaxNotifies  = 8
	MaxNotifyURL = 2048
)

// metadataAddrs are cloud metadata services outside the link-local
// ranges (AWS's IPv6 one).
var metadataAddrs = []netip.Addr{netip.MustParseAddr("fd00:ec2::254")}

// NotifyAddrRefused says why the server never sends an event to ip ("" if
// it may): link-local addresses (169.254.0.0/16, fe80::/10, where cloud
// metadata services answer), the unspecified and multicast addresses, and
// the known metadata addresses outside those ranges. Loopback and private
// addresses are allowed: receivers on the server's own host or network
// are the common case.
func NotifyAddrRefused(ip netip.Addr) string {
	ip = ip.Unmap()
	switch {
	case ip.IsLinkLocalUnicast(), ip.IsLinkLocalMulticast():
		return "a link-local address"
	case ip.IsUnspecified():
		return "the unspecified address"
	case ip.IsMulticast(), ip.IsInterfaceLocalMulticast():
		return "a multicast address"
	case slices.Contains(metadataAddrs, ip):
		return "a cloud metadata address"
	}
	return ""
}

// CheckNotifyURL checks a notify URL: http or https, a host, no user or
// password (the URL is shown in run info), no fragment, and a literal
// address NotifyAddrRefused refuses. Names are checked again when the
// sender dials, on every address they resolve to.
func CheckNotifyURL(raw string) error {
	if len(raw) > MaxNotifyURL {
		return fmt.Errorf("notify url: longer than %d bytes", MaxNotifyURL)
	}
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return fmt.Errorf("notify url %.80q: %v", raw, err)
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("notify url %.80q: want http:// or https://", raw)
	case u.Hostname() == "":
		return fmt.Errorf("notify url %.80q: no host", raw)
	case u.User != nil:
		return fmt.Errorf("notify url %.80q: no user or password in the url (it is shown in run info); sign with a secret", raw)
	case u.Fragment != "" || strings.ContainsAny(raw, " \t\r\n"):
		return fmt.Errorf("notify url %.80q: no fragment nor white space", raw)
	}
	if ip, err := netip.ParseAddr(strings.Trim(u.Hostname(), "[]")); err == nil {
		if why := NotifyAddrRefused(ip); why != "" {
			return fmt.Errorf("notify url %.80q: %s is %s; events are never sent there", raw, ip, why)
		}
	}
	return nil
}

// CheckNotifyEvents checks a [[notify]]'s events: at least one, each of
// NotifyEvents, none twice.
func CheckNotifyEvents(events []string) error {
	if len(events) == 0 {
		return fmt.Errorf("notify: no events (want some of %s)", strings.Join(NotifyEvents, ", "))
	}
	for i, e := range events {
		if !slices.Contains(NotifyEvents, e) {
			return fmt.Errorf("notify: event %.40q: want one of %s", e, strings.Join(NotifyEvents, ", "))
		}
		if slices.Contains(events[:i], e) {
			return fmt.Errorf("notify: event %q given twice", e)
		}
	}
	return nil
}

// validateNotify checks a job's [[notify]] entries.
func validateNotify(ns []Notify) error {
	if len(ns) > MaxNotifies {
		return fmt.Errorf("notify: at most %d entries", MaxNotifies)
	}
	for i, n := range ns {
		if err := CheckNotifyURL(n.URL); err != nil {
			return err
		}
		if err := CheckNotifyEvents(n.Events); err != nil {
			return err
		}
		for _, m := range ns[:i] {
			if m.URL == n.URL {
				return fmt.Errorf("notify url %.80q given twice (list all its events in one [[notify]])", n.URL)
			}
		}
	}
	return nil
}
