package config

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/kiln-build/kiln/api"
)

// validateNotify checks the outgoing events' settings: positive
// durations, each [[notify]]'s url (no link-local or metadata address,
// api.CheckNotifyURL) and events, one [[notify]] per url, and that every
// secret named can be read now rather than at the first event.
func (s *Server) validateNotify() error {
	if s.NotifyTimeout <= 0 || s.NotifyBackoff <= 0 || s.NotifyBackoffMax < s.NotifyBackoff || s.NotifyRetryFor <= 0 || s.NotifyTick <= 0 {
		return errors.New("server config: notify_timeout, notify_backoff, notify_retry_for and notify_tick must be positive, notify_backoff_max at least notify_backoff")
	}
	seen := map[string]bool{}
	for i, n := range s.Notify {
		if err := api.CheckNotifyURL(n.URL); err != nil {
			return fmt.Errorf("server config: notify[%d]: %w", i, err)
		}
		if err := api.CheckNotifyEvents(n.Events); err != nil {
			return fmt.Errorf("server config: notify[%d] (%s): %w", i, n.URL, err)
		}
		if seen[n.URL] {
			return fmt.Errorf("server config: notify url %s given twice", n.URL)
		}
		seen[n.URL] = true
		if _, err := ReadSecret(n.SecretFile, n.SecretEnv); err != nil {
			return fmt.Errorf("server config: notify[%d] (%s): %w", i, n.URL, err)
		}
	}
	for name, ns := range s.NotifySecrets {
		if ns.File == "" && ns.Env == "" {
			return fmt.Errorf("server config: notify_secrets.%s: set file or env", name)
		}
		if _, err := ReadSecret(ns.File, ns.Env); err != nil {
			return fmt.Errorf("server config: notify_secrets.%s: %w", name, err)
		}
	}
	return nil
}

// ReadSecret reads a secret from file (a trailing newline dropped) or,
// when file is "", from the environment variable env; both "" is no
// secret (nil). A named but empty secret is an error.
func ReadSecret(file, env string) ([]byte, error) {
	var v string
	switch {
	case file != "" && env != "":
		return nil, errors.New("set secret file or env, not both")
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("secret: %w", err)
		}
		v = strings.TrimRight(string(b), "\r\n")
	case env != "":
		v = os.Getenv(env)
	default:
		return nil, nil
	}
	if v == "" {
		return nil, fmt.Errorf("secret %s%s is empty", file, env)
	}
	return []byte(v), nil
}
