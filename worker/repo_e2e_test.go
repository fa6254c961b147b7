//go:build linux

package worker_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// TestRepoAptInstall is the apt test of docs/publishing.md: a
// reproduce = 2 group on two real workers copies a .deb (an input) to
// /out; its reproducible verdict publishes it into a private signed
// repository; then, in a fresh Debian bookworm tree (debootstrap), apt-get
// update with the repository's key as signed-by and the token in
// auth.conf, apt-get install, and the installed program runs.
func TestRepoAptInstall(t *testing.T) {
	cl := newCluster(t, `reproduce_wait = "1h"`)
	tree := testsupport.DebianTree(t, "bookworm") // first: it may take a while to build
	testsupport.NeedCommand(t, "unshare")
	ctx := context.Background()
	admin := cl.client()
	if _, err := admin.CreateRepo(ctx, &api.CreateRepoRequest{Name: "tools", Suite: "stable", Arches: []string{"amd64", "arm64"}}); err != nil {
		t.Fatal(err)
	}
	deb := testsupport.Deb("Package: kiln-hello\nVersion: 1.0-1\nArchitecture: all\nMaintainer: kiln <kiln@example.invalid>\nDescription: greets\n a package published by a kiln test\n",
		map[string]string{"usr/bin/kiln-hello": "#!/bin/sh\necho hello from kiln\n"})
	sum := sha256.Sum256(deb)
	debSHA := hex.EncodeToString(sum[:])
	if err := admin.UploadBlob(ctx, debSHA, bytes.NewReader(deb), int64(len(deb))); err != nil {
		t.Fatal(err)
	}
	a := cl.addWorker(t, "a", "", "", "busybox")
	b := cl.addWorker(t, "b", "", "", "busybox")
	job := cl.addJob(t, fmt.Sprintf(`name = "pkg"
image = "busybox"
reproduce = 2
script = "cp /in/kiln-hello.deb /out/kiln-hello_1.0-1_all.deb"
[[inputs]]
path = "kiln-hello.deb"
sha256 = %q
[publish]
repo = "tools"
`, debSHA))
	cl.waitHeartbeats(t, a.name, b.name)
	r, err := admin.ExecuteJobWith(ctx, job, api.ExecuteRequest{})
	if err != nil || r.Group == "" {
		t.Fatalf("execute: %+v %v", r, err)
	}
	g := cl.waitGroup(t, r.Group, 3*time.Minute)
	if !g.Verdict.Reproducible {
		t.Fatalf("verdict %+v", g.Verdict)
	}
	// The verdict is stored first, then published: wait for the latter.
	for deadline := time.Now().Add(time.Minute); len(g.Publications) == 0 && time.Now().Before(deadline); {
		time.Sleep(200 * time.Millisecond)
		if g, err = admin.GetGroup(ctx, r.Group); err != nil {
			t.Fatal(err)
		}
	}
	if len(g.Publications) != 1 || g.Publications[0].State != api.PublishedNew || g.Publications[0].Repo != "tools" {
		t.Fatalf("group publications: %+v\nserver log:\n%s", g.Publications, tail(cl.srv.Log()))
	}
	key, err := admin.RepoKey(ctx, "tools")
	if err != nil {
		t.Fatal(err)
	}
	// A client token reads the private repository (basic auth, as apt's
	// auth.conf sends it).
	tok, err := admin.CreateClientToken(ctx, api.ClientTokenRequest{Name: "apt"})
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(cl.srv.URL)
	repoURL := cl.srv.URL + "/repos/tools"
	write := func(rel, content string, mode os.FileMode) {
		p := filepath.Join(tree, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
	// Only kiln's repository: the test reaches nothing but 127.0.0.1.
	_ = os.Remove(filepath.Join(tree, "etc/apt/sources.list"))
	_ = os.RemoveAll(filepath.Join(tree, "etc/apt/sources.list.d"))
	write("etc/apt/keyrings/kiln-tools.asc", key, 0o644)
	write("etc/apt/sources.list.d/kiln.list", "deb [signed-by=/etc/apt/keyrings/kiln-tools.asc] "+repoURL+" stable main\n", 0o644)
	write("etc/apt/auth.conf.d/kiln.conf", "machine http://"+u.Host+"/repos/tools\nlogin kiln\npassword "+tok.Token+"\n", 0o600)
	script := "set -e; apt-get update; apt-get install -y --no-install-recommends kiln-hello; kiln-hello; dpkg-query -W -f '${Version}\\n' kiln-hello"
	cmd := exec.Command("unshare", "--mount", "--pid", "--fork", "--mount-proc="+filepath.Join(tree, "proc"), "chroot", tree, "/bin/sh", "-c", script)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C"}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("apt in the Debian tree: %v\n%s\nserver log:\n%s", err, out, tail(cl.srv.Log()))
	}
	if !strings.Contains(string(out), "hello from kiln\n1.0-1\n") {
		t.Fatalf("apt output:\n%s", out)
	}
	if strings.Contains(string(out), "NO_PUBKEY") || strings.Contains(string(out), "W: GPG error") || strings.Contains(string(out), "not signed") {
		t.Fatalf("apt warned about the signature:\n%s", out)
	}
	t.Logf("apt:\n%s", out)
}
