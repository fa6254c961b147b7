//go:build linux

package worker_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
	"github.com/kiln-build/kiln/sandbox"
)

// TestReproduceTime: in real containers, the varied member of a group
// reads a clock 398 days ahead from every dynamically linked process,
// including one started with a cleared environment (the clone's
// /etc/ld.so.preload and /etc/faketimerc), while the baseline reads the
// host's; a static binary (busybox date) keeps the host's clock, as
// docs/reproducibility.md says; the library's mount is read-only. A job
// that keeps time gets it on no member, and both record it kept.
func TestReproduceTime(t *testing.T) {
	lib := sandbox.HostFaketime()
	_, err := os.Stat(lib)
	testsupport.Need(t, err == nil, lib+" (apt-get install libfaketime)")
	cl := newCluster(t, `reproduce_wait = "1h"`)
	root := testsupport.BusyboxRootfs(t)
	date, err := filepath.EvalSymlinks("/bin/date")
	testsupport.Need(t, err == nil, "the host's coreutils date")
	testsupport.AddHostGlibc(t, root, map[string]string{"gdate": date})
	var nodes []*node
	for _, name := range []string{"time-a", "time-b"} {
		n := cl.addWorkerWith(t, name, "", "", "")
		n.host.MustKiln(t, "image", "create", "-n", "glibc", "-m", "dir="+root, "-q")
		nodes = append(nodes, n)
	}
	const script = `set -e
gdate +%s > /out/dynamic
env -i /usr/bin/gdate +%s > /out/cleared
busybox date +%s > /out/static
# The library is the host's, mounted read-only: the job cannot replace it.
if [ -d /.kiln-faketime ]; then
	if touch /.kiln-faketime/x 2>/dev/null || rm -f /.kiln-faketime/libfaketime.so.1 2>/dev/null; then
		echo writable > /out/faketime-dir
	else
		echo read-only > /out/faketime-dir
	fi
else
	echo absent > /out/faketime-dir
fi
`
	varied := cl.addJob(t, "name = \"clock\"\nimage = \"glibc\"\nscript = '''\n"+script+"'''\n")
	kept := cl.addJob(t, "name = \"clock-kept\"\nimage = \"glibc\"\nscript = '''\n"+script+"'''\n[reproduce]\nkeep = [\"time\"]\n")
	cl.waitHeartbeats(t, nodes[0].name, nodes[1].name)

	const ahead = 398 * 24 * time.Hour
	tests := []struct {
		job      string
		offset   [2]time.Duration // of member 0, member 1
		wantVar  string           // member 1's Variations["time"]
		wantKept string
	}{
		{varied, [2]time.Duration{0, ahead}, "+398d", ""},
		{kept, [2]time.Duration{0, 0}, "", "time"},
	}
	for _, tt := range tests {
		t.Run(tt.job, func(t *testing.T) {
			start := time.Now().Add(-time.Second)
			g := cl.waitGroup(t, cl.executeTwins(t, tt.job), 3*time.Minute)
			end := time.Now().Add(time.Second)
			for i, m := range g.Members {
				if m.State != api.StateSucceeded {
					t.Fatalf("member %s: %s %s\nconsole:\n%s", m.ID, m.State, m.Error, cl.console(t, m.ID))
				}
				if m.Variations[api.VariationKept] != tt.wantKept {
					t.Errorf("member %d records kept %q, want %q", i, m.Variations[api.VariationKept], tt.wantKept)
				}
				if want := []string{"", tt.wantVar}[i]; m.Variations[api.VariationTime] != want {
					t.Errorf("member %d records time %q, want %q", i, m.Variations[api.VariationTime], want)
				}
				wantDir := "absent\n"
				if tt.offset[i] != 0 {
					wantDir = "read-only\n"
				}
				if got := cl.artifact(t, &g.Members[i], "faketime-dir"); got != wantDir {
					t.Errorf("member %d /.kiln-faketime %q, want %q", i, got, wantDir)
				}
				for p, off := range map[string]time.Duration{"dynamic": tt.offset[i], "cleared": tt.offset[i], "static": 0} {
					s := strings.TrimSpace(cl.artifact(t, &g.Members[i], p))
					sec, err := strconv.ParseInt(s, 10, 64)
					if err != nil {
						t.Fatalf("member %d %s = %q: %v", i, p, s, err)
					}
					got := time.Unix(sec, 0)
					if got.Before(start.Add(off)) || got.After(end.Add(off)) {
						t.Errorf("member %d %s clock %s, want %s ahead of the host's (%s to %s)\nconsole:\n%s",
							i, p, got.UTC(), off, start.UTC(), end.UTC(), cl.console(t, m.ID))
					}
				}
			}
		})
	}
}
