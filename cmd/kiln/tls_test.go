package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-build/kiln/internal/testsupport"
)

func TestCheckListen(t *testing.T) {
	for _, tt := range []struct {
		listen        string
		tls, insecure bool
		ok            bool
	}{
		{"127.0.0.1:8420", false, false, true},
		{"127.1.2.3:8420", false, false, true},
		{"[::1]:8420", false, false, true},
		{"localhost:8420", false, false, true},
		{"0.0.0.0:8420", false, false, false},
		{":8420", false, false, false},
		{"[::]:8420", false, false, false},
		{"192.0.2.1:8420", false, false, false},
		{"kiln.example:8420", false, false, false},
		{"0.0.0.0:8420", true, false, true},
		{"0.0.0.0:8420", false, true, true},
		{"no-port", false, false, false},
	} {
		err := checkListen(tt.listen, tt.tls, tt.insecure)
		if (err == nil) != tt.ok {
			t.Errorf("checkListen(%q, tls %v, insecure %v) = %v, want ok %v", tt.listen, tt.tls, tt.insecure, err, tt.ok)
		}
	}
}

// startServerProcess runs `kiln server` with args and returns its first
// stderr lines up to the one naming the listener, or everything it said
// before it exited, and whether it is listening.
func startServerProcess(t *testing.T, config string, args ...string) (string, bool) {
	t.Helper()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "server.toml")
	if err := os.WriteFile(cfg, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(testsupport.BuildKiln(t), append([]string{"server", "--config", cfg, "--data-dir", filepath.Join(dir, "data")}, args...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	var said strings.Builder
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		said.WriteString(sc.Text() + "\n")
		if strings.Contains(sc.Text(), "kiln server listening") {
			return said.String(), true
		}
	}
	return said.String(), false
}

// A server refuses plain HTTP off the loopback unless told
// --insecure-http; with TLS it serves anywhere.
func TestServerRefusesPlainHTTPOffLoopback(t *testing.T) {
	dir := t.TempDir()
	cert, key := testsupport.SelfSignedCert(t, dir)
	tlsConfig := "tls_cert = \"" + cert + "\"\ntls_key = \"" + key + "\"\n"
	for _, tt := range []struct {
		name, config string
		args         []string
		listens      bool
		want         string
	}{
		{"plain HTTP on all interfaces is refused", "", []string{"--listen", "0.0.0.0:0"}, false, "--insecure-http"},
		{"plain HTTP on all interfaces with --insecure-http", "", []string{"--listen", "0.0.0.0:0", "--insecure-http"}, true, "clear text"},
		{"plain HTTP on the loopback", "", []string{"--listen", "127.0.0.1:0"}, true, "tls=false"},
		{"TLS on all interfaces", tlsConfig, []string{"--listen", "0.0.0.0:0"}, true, "tls=true"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			said, listens := startServerProcess(t, tt.config, tt.args...)
			if listens != tt.listens || !strings.Contains(said, tt.want) {
				t.Fatalf("listening %v, want %v; said (want %q):\n%s", listens, tt.listens, tt.want, said)
			}
		})
	}
}

// The CLI reaches a server whose certificate a private CA signed with
// --tls-ca (or KILN_TLS_CA), and refuses it without.
func TestCLITrustsPrivateCA(t *testing.T) {
	srv := testsupport.StartTLSServer(t)
	kiln := testsupport.BuildKiln(t)
	for _, tt := range []struct {
		name string
		args []string
		env  []string
		ok   bool
	}{
		{"--tls-ca", []string{"--tls-ca", srv.CAFile}, nil, true},
		{"KILN_TLS_CA", nil, []string{"KILN_TLS_CA=" + srv.CAFile}, true},
		{"no CA", nil, nil, false},
		{"a CA file without certificates", []string{"--tls-ca", testsupport.WriteFile(t, "empty.pem", "nothing\n")}, nil, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(kiln, append([]string{"job", "list", "--server", srv.URL, "--token", srv.AdminToken()}, tt.args...)...)
			cmd.Env = append(os.Environ(), tt.env...)
			out, err := cmd.CombinedOutput()
			if (err == nil) != tt.ok {
				t.Fatalf("kiln job list: %v, want ok %v:\n%s", err, tt.ok, out)
			}
			if !tt.ok && !strings.Contains(string(out), "certificate") {
				t.Fatalf("the error does not name the certificate:\n%s", out)
			}
		})
	}
}
