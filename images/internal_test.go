package images

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestNextVersion(t *testing.T) {
	now := time.Date(2026, 11, 21, 12, 0, 0, 500, time.UTC)
	for _, c := range []struct {
		name, newest, want string
	}{
		{"first", "", "20261121T120000Z"},
		{"later", "20261120T000000Z", "20261121T120000Z"},
		{"same second", "20261121T120000Z", "20261121T120001Z"},
		{"clock went back", "20261121T130000Z", "20261121T130001Z"},
		{"foreign version name", "v1", "20261121T120000Z"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := nextVersion(now, c.newest); got != c.want {
				t.Errorf("nextVersion(%s) = %s, want %s", c.newest, got, c.want)
			}
		})
	}
}

func TestDebootstrapProgress(t *testing.T) {
	var out bytes.Buffer
	p := &debootstrapProgress{w: &out}
	lw := &lineWriter{fn: p.line}
	in := "I: Retrieving InRelease \nI: Checking Release signature\n"
	for i := 0; i < 60; i++ {
		in += "I: Retrieving pkg" + string(rune('a'+i%26)) + " 1.0-1\n"
	}
	in += "I: Extracting libc6...\nI: Extracting dash...\nW: something odd\nI: Base system installed successfully.\n"
	lw.Write([]byte(in[:17])) // lines arrive in pieces
	lw.Write([]byte(in[17:]))
	want := `debootstrap: Retrieving InRelease
debootstrap: Checking Release signature
debootstrap: retrieving: 50 packages...
debootstrap: retrieving: 60 packages
debootstrap: extracting: 2 packages
debootstrap: W: something odd
debootstrap: Base system installed successfully.
`
	if out.String() != want {
		t.Errorf("progress:\n%s\nwant:\n%s", out.String(), want)
	}
}

// The freebsd method refuses to run on Linux, but fetching its dist sets
// is plain HTTP or a directory, tested here.
func TestDistSet(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/14.2-RELEASE/base.txz" {
			http.NotFound(w, r)
			return
		}
		w.Write([]byte("dist set bytes"))
	}))
	defer srv.Close()
	local := t.TempDir()
	os.MkdirAll(filepath.Join(local, "14.2-RELEASE"), 0o755)
	os.WriteFile(filepath.Join(local, "14.2-RELEASE", "base.txz"), []byte("dist set bytes"), 0o644)
	for _, c := range []struct {
		name, dist, set string
		ok              bool
	}{
		{"url", srv.URL + "/", "base", true},
		{"url missing set", srv.URL, "lib32", false},
		{"dir", local, "base", true},
		{"dir missing set", local, "lib32", false},
		{"unset", "", "base", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			m := NewManager(nil, filepath.Join(dir, "images"), Options{FreeBSDDist: c.dist})
			env := &buildEnv{progress: &bytes.Buffer{}}
			p, err := m.distSet(context.Background(), env, "14.2-RELEASE", c.set)
			if !c.ok {
				if err == nil {
					t.Fatalf("distSet = %s, want an error", p)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got, err := os.ReadFile(p); err != nil || string(got) != "dist set bytes" {
				t.Errorf("%s: %q, %v", p, got, err)
			}
			if strings.HasPrefix(c.dist, "http") && !strings.HasPrefix(p, filepath.Join(dir, "cache")) {
				t.Errorf("download not in the cache: %s", p)
			}
		})
	}
}
