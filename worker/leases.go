package worker

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/durable"
)

// Leases the worker holds are kept on disk while their runs go on, so that
// a worker that crashed or was restarted can reattach to the sandboxes
// that outlived it and report them with the right fencing token. They are
// kept per server (leases/<server id>/), so that records of a server the
// data dir was once enrolled with are never taken for this one's.

func (w *Worker) leasesRoot() string { return filepath.Join(w.cfg.DataDir, "leases") }

func (w *Worker) leasesDir() string { return filepath.Join(w.leasesRoot(), w.cfg.ServerID) }

// dropOtherServers removes the lease records of other servers (and the
// flat records of a kiln older than per-server records): their runs are
// not this server's to report, and their sandboxes are reaped.
func (w *Worker) dropOtherServers() {
	// Staged artifacts and diffoscope inputs of another server's runs go
	// the same way.
	for _, sub := range []string{"artifacts", "diffoscope"} {
		entries, _ := os.ReadDir(filepath.Join(w.cfg.DataDir, sub))
		for _, e := range entries {
			if !strings.HasPrefix(e.Name(), w.cfg.ServerID+"-") {
				_ = os.RemoveAll(filepath.Join(w.cfg.DataDir, sub, e.Name()))
			}
		}
	}
	entries, err := os.ReadDir(w.leasesRoot())
	if err != nil {
		return
	}
	for _, e := range entries {
		if e.Name() == w.cfg.ServerID {
			continue
		}
		p := filepath.Join(w.leasesRoot(), e.Name())
		w.log.Warn("dropping lease records of another server; their sandboxes are reaped and that server requeues the runs", "path", p)
		if err := os.RemoveAll(p); err != nil {
			w.log.Warn("dropping lease records", "path", p, "err", err)
		}
	}
}

func (w *Worker) saveLease(a *api.Assignment) {
	data, err := json.Marshal(a)
	if err == nil {
		err = os.MkdirAll(w.leasesDir(), 0o700)
	}
	if err == nil {
		p := filepath.Join(w.leasesDir(), a.RunID+".json")
		// Read only by a restarted worker process to reattach to the
		// run's sandbox, which a reboot would have ended too: no fsync
		// on the way from the lease to the job's start.
		err = durable.Replace(p, data, 0o600)
	}
	if err != nil {
		// Without the record a crash loses the run to lease expiry; the
		// run itself is unaffected.
		w.log.Warn("recording lease", "run", a.RunID, "err", err)
	}
}

func (w *Worker) removeLease(runID string) {
	if err := os.Remove(filepath.Join(w.leasesDir(), runID+".json")); err != nil && !os.IsNotExist(err) {
		w.log.Warn("removing lease record", "run", runID, "err", err)
	}
}

// loadLeases reads the leases a previous worker process left.
func (w *Worker) loadLeases() map[string]*api.Assignment {
	out := map[string]*api.Assignment{}
	entries, err := os.ReadDir(w.leasesDir())
	if err != nil {
		return out
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		p := filepath.Join(w.leasesDir(), e.Name())
		data, err := os.ReadFile(p)
		var a api.Assignment
		if err == nil {
			err = json.Unmarshal(data, &a)
		}
		if err == nil {
			// The record is the server's assignment as it came: check
			// it as a fresh one is checked.
			err = a.Validate()
		}
		if err != nil || a.RunID+".json" != e.Name() {
			w.log.Warn("dropping unreadable lease record", "file", p, "err", err)
			os.Remove(p)
			continue
		}
		out[a.RunID] = &a
	}
	return out
}
