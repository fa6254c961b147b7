//go:build linux

package worker_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
)

// A cache is kept per owner: what client token A's run leaves in it is
// not what client token B's run finds; a cache the admin marked shared
// gives B what A left.
func TestCachesPerOwner(t *testing.T) {
	cl := newCluster(t)
	dir := t.TempDir()
	extra := fmt.Sprintf("[caches.own]\ndir = %q\ntarget = \"/var/cache/own\"\n[caches.pub]\ndir = %q\ntarget = \"/var/cache/pub\"\nshared = true\n",
		filepath.Join(dir, "own"), filepath.Join(dir, "pub"))
	cl.addWorkerWith(t, "w1", "", "", extra, "busybox")
	ctx := context.Background()
	tokens := map[string]*api.Client{}
	for _, n := range []string{"alice", "bob"} {
		tok, err := cl.client().CreateClientToken(ctx, api.ClientTokenRequest{Name: n})
		if err != nil {
			t.Fatal(err)
		}
		tokens[n] = cl.srv.ClientWith(tok.Token)
	}
	n := 0
	run := func(t *testing.T, who, script string) string {
		t.Helper()
		c := tokens[who]
		n++
		j, err := api.ParseJobFile([]byte("name = \"c-" + who + strconv.Itoa(n) + "\"\nimage = \"busybox\"\ncaches = [\"own\", \"pub\"]\nscript = '''\n" + script + "\n'''\n"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.AddJob(ctx, j); err != nil {
			t.Fatal(err)
		}
		r, err := c.ExecuteJobWith(ctx, j.Name, api.ExecuteRequest{})
		if err != nil {
			t.Fatal(err)
		}
		got := cl.wait(t, r.ID, 3*time.Minute, finished)
		if got.State != api.StateSucceeded {
			t.Fatalf("%s's run: %s\n%s", who, got.State, cl.console(t, r.ID))
		}
		return cl.console(t, r.ID)
	}
	run(t, "alice", "mkdir -p /var/cache/own/bin /var/cache/pub && printf '#!/bin/sh\\necho planted-by-alice\\n' > /var/cache/own/bin/tool && echo alice > /var/cache/pub/index")
	out := run(t, "bob", "if [ -e /var/cache/own/bin/tool ]; then sh /var/cache/own/bin/tool; else echo own-empty; fi; cat /var/cache/pub/index")
	if strings.Contains(out, "planted-by-alice") || !strings.Contains(out, "own-empty") {
		t.Fatalf("bob's run found what alice's left in a cache kept per owner:\n%s", out)
	}
	if !strings.Contains(out, "alice\n") {
		t.Fatalf("bob's run did not find what alice's left in the shared cache:\n%s", out)
	}
	// Alice's own next run finds her file.
	if out := run(t, "alice", "sh /var/cache/own/bin/tool"); !strings.Contains(out, "planted-by-alice") {
		t.Fatalf("alice's second run did not find her own cache file:\n%s", out)
	}
}
