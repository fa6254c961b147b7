package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-build/kiln/api"
)

func TestParseJobWithInputs(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "hello.dsc")
	os.WriteFile(src, []byte("dsc"), 0o644)
	h := sha256.Sum256([]byte("dsc"))
	sum := hex.EncodeToString(h[:])
	base := "name = \"j\"\nimage = \"i\"\nscript = \"s\"\n"
	for _, tc := range []struct {
		name, file string
		inputs     []string
		want       []api.Input // nil: an error
	}{
		{"fills entry by base name", base + "[[inputs]]\npath = \"sub/hello.dsc\"\n", []string{src}, []api.Input{{Path: "sub/hello.dsc", SHA256: sum}}},
		{"adds missing entry", base, []string{src}, []api.Input{{Path: "hello.dsc", SHA256: sum}}},
		{"matching sha kept", base + "[[inputs]]\npath = \"hello.dsc\"\nsha256 = \"" + sum + "\"\n", []string{src}, []api.Input{{Path: "hello.dsc", SHA256: sum}}},
		{"conflicting sha", base + "[[inputs]]\npath = \"hello.dsc\"\nsha256 = \"" + strings.Repeat("0", 64) + "\"\n", []string{src}, nil},
		{"entry without sha and no --input", base + "[[inputs]]\npath = \"hello.dsc\"\n", nil, nil},
		{"unknown key", base + "bogus = 1\n", []string{src}, nil},
		{"missing input file", base, []string{filepath.Join(dir, "nope")}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j, err := parseJobWithInputs([]byte(tc.file), tc.inputs)
			if tc.want == nil {
				if err == nil {
					t.Fatalf("accepted: %+v", j)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(j.Inputs) != len(tc.want) || j.Inputs[0] != tc.want[0] {
				t.Fatalf("inputs %+v, want %+v", j.Inputs, tc.want)
			}
		})
	}
}

// TestArtifactGetStaysInDir: whatever paths a (malicious) server sends,
// `kiln artifact get` writes nothing outside -o DIR.
func TestArtifactGetStaysInDir(t *testing.T) {
	content := []byte("evil")
	h := sha256.Sum256(content)
	sum := hex.EncodeToString(h[:])
	for _, p := range []string{"../escape", "/abs/escape", "a/../../escape", "link/escape", "ok/../../escape", ""} {
		t.Run(p, func(t *testing.T) {
			top := t.TempDir()
			out := filepath.Join(top, "out")
			outside := filepath.Join(top, "outside")
			os.MkdirAll(out, 0o755)
			os.MkdirAll(outside, 0o755)
			os.Symlink(outside, filepath.Join(out, "link"))
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				switch {
				case strings.HasSuffix(r.URL.Path, "/artifacts"):
					json.NewEncoder(w).Encode([]api.Artifact{{Path: p, Size: 4, Mode: 0o644, SHA256: sum}})
				case strings.HasPrefix(r.URL.Path, "/v1/blobs/"):
					w.Write(content)
				default:
					http.NotFound(w, r)
				}
			}))
			defer srv.Close()
			g := &globals{}
			root := newRoot(g)
			root.SetArgs([]string{"--server", srv.URL, "--token", "t", "artifact", "get", "1", "-o", out})
			var stdout bytes.Buffer
			root.SetOut(&stdout)
			root.SetErr(&stdout)
			if err := root.ExecuteContext(context.Background()); err == nil {
				t.Fatalf("artifact %q was accepted", p)
			}
			for _, dir := range []string{top, outside, filepath.Dir(top)} {
				if _, err := os.Stat(filepath.Join(dir, "escape")); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("a file was written outside -o: %s", filepath.Join(dir, "escape"))
				}
			}
		})
	}
}

func TestRunExit(t *testing.T) {
	code := func(c int) *int { return &c }
	for _, tc := range []struct {
		run  api.Run
		want int
	}{
		{api.Run{State: api.StateSucceeded, ExitCode: code(0)}, 0},
		{api.Run{State: api.StateFailed, ExitCode: code(3)}, 3},
		{api.Run{State: api.StateFailed, ExitCode: code(0), Error: "post hook failed"}, 1},
		{api.Run{State: api.StateFailed, Signal: "SIGKILL"}, 137},
		{api.Run{State: api.StateTimedOut}, 124},
		{api.Run{State: api.StateCancelled}, 130},
		{api.Run{State: api.StateLost}, 1},
	} {
		t.Run(tc.run.State+tc.run.Signal, func(t *testing.T) {
			err := runExit(&tc.run)
			got := 0
			var ee *exitError
			if errors.As(err, &ee) {
				got = ee.code
			} else if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("exit %d, want %d", got, tc.want)
			}
		})
	}
}
