package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-build/kiln/api"
)

// hostileIDs are server identities a hostile or spoofed server might send
// to lead the worker's lease, staging and run directories elsewhere.
var hostileIDs = []string{"../../etc", "/etc", "..", "a/b", "", "5e5e5e5e0000000\x00", strings.Repeat("a", 4096), "5E5E5E5E00000000", "5e5e5e5e000000000"}

// A server that answers enroll with an identity that is not 16 lowercase
// hex digits is refused, and the host config keeps nothing of it.
// (Three ids: each enroll probes the host's facts, which takes seconds;
// the shape check itself is TestLearnServerIDRefusesHostileID's.)
func TestEnrollRefusesHostileServerID(t *testing.T) {
	for _, id := range []string{"../../etc", "/etc", "5e5e5e5e0000000\x00"} {
		t.Run(strings.ReplaceAll(id[:min(len(id), 20)], "/", "_"), func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/v1/enroll" {
					http.NotFound(w, r)
					return
				}
				json.NewEncoder(w).Encode(api.EnrollResponse{Name: "h", Token: "kiln_worker_x", ServerID: id})
			}))
			defer srv.Close()
			dir := t.TempDir()
			cfgPath := filepath.Join(dir, "worker.toml")
			want := "data_dir = " + `"` + filepath.Join(dir, "data") + `"` + "\n"
			if err := os.WriteFile(cfgPath, []byte(want), 0o600); err != nil {
				t.Fatal(err)
			}
			root := newRoot(&globals{})
			root.SetArgs([]string{"--server", srv.URL, "--token", "kiln_enroll_x", "worker", "enroll", "--name", "h", "--config", cfgPath})
			var out bytes.Buffer
			root.SetOut(&out)
			root.SetErr(&out)
			err := root.ExecuteContext(context.Background())
			if err == nil || !strings.Contains(err.Error(), "identity") {
				t.Fatalf("enroll with server id %.40q: err %v, want a refusal\n%s", id, err, &out)
			}
			got, err := os.ReadFile(cfgPath)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != want {
				t.Fatalf("the host config was rewritten:\n%s", got)
			}
		})
	}
}

// A host enrolled before servers had an identity learns it from a
// heartbeat: one of another shape is refused.
func TestLearnServerIDRefusesHostileID(t *testing.T) {
	for _, id := range append(hostileIDs, "5e5e5e5e00000000") {
		t.Run(strings.ReplaceAll(id[:min(len(id), 20)], "/", "_"), func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				json.NewEncoder(w).Encode(api.HeartbeatResponse{ServerID: id})
			}))
			defer srv.Close()
			got, err := learnServerID(context.Background(), api.NewClient(srv.URL, "kiln_worker_x"), api.Facts{})
			if api.ValidServerID(id) {
				if err != nil || got != id {
					t.Fatalf("a valid id: got %q, %v", got, err)
				}
				return
			}
			if err == nil || got != "" {
				t.Fatalf("server id %.40q was taken: %q, %v", id, got, err)
			}
		})
	}
}
