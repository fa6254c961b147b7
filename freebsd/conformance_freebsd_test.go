package freebsd

import (
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/kiln-build/kiln/internal/testsupport"
	"github.com/kiln-build/kiln/sandbox"
	"github.com/kiln-build/kiln/sandbox/launchertest"
)

// The jail launcher's golden path. It needs a FreeBSD host (root, jail(8));
// kiln's CI runs on Linux, where this file is only compiled and vetted
// (GOOS=freebsd go vet ./freebsd/), never run: see doc.go.
func TestJailsConformance(t *testing.T) {
	testsupport.NeedRoot(t)
	launchertest.Run(t, launchertest.Config{
		Open: func(t *testing.T, o launchertest.Owner) sandbox.Launcher {
			j, err := NewJails(Options{ConfDir: filepath.Join(o.Dir, "jails"), Logger: slog.New(slog.NewTextHandler(t.Output(), nil))})
			if err != nil {
				t.Fatalf("NewJails: %v", err)
			}
			return j
		},
		Root: testsupport.RescueRootfs,
		Skip: map[string]string{
			"Reattach": "Jails is no sandbox.Attacher: a restarted worker reaps the jail and the run is retried (sandbox/doc.go, Reattach)",
			// TODO: fix, then drop these two (read from the code; not run).
			"KilledBySignal": "KNOWN BUG, not an opt-out: a job that exits 128+n gets no Signal name (exitOf names only a signal that ended jexec itself)",
			"OwnersApart":    "KNOWN BUG, not an opt-out: Jails.Reap removes every kiln_ jail of the host, whatever data dir (ConfDir) it belongs to",
		},
	})
}
