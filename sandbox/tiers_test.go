package sandbox

import (
	"context"
	"errors"
	"testing"
)

// named is a Launcher that only says which it is.
type named string

func (n named) Start(ctx context.Context, spec Spec) (Sandbox, error) {
	return nil, errors.New(string(n))
}
func (n named) Reap(ctx context.Context, keep func(string) bool) error { return nil }

func TestTiersPicksByIsolation(t *testing.T) {
	tiers := &Tiers{Default: named("default"), By: map[string]Launcher{"vm": named("vm")},
		Unavailable: map[string]error{"other": errors.New("no other here")}}
	for _, tc := range []struct{ isolation, want string }{
		{"", "default"},
		{"container", "default"},
		{"vm", "vm"},
		{"other", `isolation "other" is not available on this host: no other here`},
		{"gvisor", `isolation "gvisor" is not available on this host: unsupported`},
	} {
		t.Run(tc.isolation, func(t *testing.T) {
			_, err := tiers.Start(context.Background(), Spec{Isolation: tc.isolation})
			if err == nil || err.Error() != tc.want {
				t.Errorf("Start: %v, want %q", err, tc.want)
			}
		})
	}
}
