package sandbox

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/kiln-build/kiln/errdefs"
)

// containerOnly is a Launcher that offers only the container tier.
type containerOnly struct{ Launcher }

// gvisorToo offers container and gvisor.
type gvisorToo struct{ Launcher }

func (gvisorToo) Isolations() []string { return []string{"container", "gvisor"} }

// TestCheckIsolation: a run asking for a tier the host's launcher does not
// offer is refused before anything is made, naming the tiers offered; Tiers
// offers its default launcher's tiers and those of By.
func TestCheckIsolation(t *testing.T) {
	tests := []struct {
		name     string
		launcher Launcher
		tier     string
		wantErr  string // "" for none
	}{
		{"default on plain launcher", containerOnly{}, "", ""},
		{"container", containerOnly{}, "container", ""},
		{"gvisor missing", containerOnly{}, "gvisor", `isolation "gvisor": this host offers container`},
		{"gvisor offered", gvisorToo{}, "gvisor", ""},
		{"vm missing", gvisorToo{}, "vm", `isolation "vm": this host offers container, gvisor`},
		{"vm through tiers", &Tiers{Default: gvisorToo{}, By: map[string]Launcher{"vm": containerOnly{}}}, "vm", ""},
		{"gvisor through tiers", &Tiers{Default: gvisorToo{}}, "gvisor", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &Runner{Launcher: tt.launcher, RunsDir: t.TempDir()}
			err := r.CheckIsolation(tt.tier)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, errdefs.ErrUnsupported) {
				t.Fatalf("got %v, want errdefs.ErrUnsupported with %q", err, tt.wantErr)
			}
			// Run refuses it the same way, before any clone.
			if _, err := r.Run(context.Background(), Request{RunID: "r1", Isolation: tt.tier}); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Run: %v", err)
			}
		})
	}
}
