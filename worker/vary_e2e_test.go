//go:build linux

package worker_test

import (
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// TestReproduceVariations: in real containers, the varied member of a
// group sees fewer CPUs, a NIS domain, its own $HOME (made, its user's),
// bash as /bin/sh, no address randomisation, a 2.6 kernel in uname and its
// own user and group names, the baseline none of it (dash as /bin/sh); a job
// that keeps some of them gets them on no member, and both members
// record what was kept.
func TestReproduceVariations(t *testing.T) {
	testsupport.Need(t, runtime.NumCPU() >= 2, "2 CPUs (the cpus variation gives the varied member 1)")
	cl := newCluster(t, `reproduce_wait = "1h"`)
	// An image with both shells, as a Debian image has them.
	root := testsupport.BusyboxRootfs(t)
	for _, sh := range []string{"dash", "bash"} {
		if err := os.Symlink("busybox", filepath.Join(root, "bin", sh)); err != nil {
			t.Fatal(err)
		}
	}
	var nodes []*node
	for _, name := range []string{"vary-a", "vary-b"} {
		n := cl.addWorkerWith(t, name, "", "", "")
		n.host.MustKiln(t, "image", "create", "-n", "shells", "-m", "dir="+root, "-q")
		nodes = append(nodes, n)
	}
	const script = `set -e
nproc > /out/nproc
cat /proc/sys/kernel/domainname > /out/domain
echo "$HOME" > /out/home
touch "$HOME/.written"
readlink /bin/sh > /out/sh
cat /proc/self/personality > /out/personality
uname -r | cut -d. -f1,2 > /out/kernel
id -un > /out/user
id -gn > /out/group
`
	varied := cl.addJob(t, "name = \"varied\"\nimage = \"shells\"\nscript = '''\n"+script+"'''\n")
	kept := cl.addJob(t, "name = \"kept\"\nimage = \"shells\"\nscript = '''\n"+script+"'''\n[reproduce]\nkeep = [\"shell\", \"cpus\", \"user\", \"aslr\", \"kernel\", \"user_group\"]\n")
	cl.waitHeartbeats(t, nodes[0].name, nodes[1].name)
	all := strconv.Itoa(runtime.NumCPU()) + "\n"
	var host unix.Utsname
	if err := unix.Uname(&host); err != nil {
		t.Fatal(err)
	}
	kernel := strings.Join(strings.SplitN(unix.ByteSliceToString(host.Release[:]), ".", 3)[:2], ".") + "\n"

	tests := []struct {
		job      string
		base     map[string]string
		varied   map[string]string
		wantKept string
	}{
		{varied,
			map[string]string{"nproc": all, "domain": "(none)\n", "home": "/root\n", "sh": "dash\n",
				"personality": "00000000\n", "kernel": kernel, "user": "root\n", "group": "root\n"},
			map[string]string{"nproc": "1\n", "domain": "build-b.kiln.invalid\n", "home": "/home/kiln-b\n", "sh": "bash\n",
				"personality": "00060000\n", "kernel": "2.6\n", "user": "kiln-b\n", "group": "kiln-b-grp\n"},
			""},
		{kept, // the image's /bin/sh is busybox: a kept shell is not touched
			map[string]string{"nproc": all, "domain": "(none)\n", "home": "/root\n", "sh": "busybox\n",
				"personality": "00000000\n", "kernel": kernel, "user": "root\n", "group": "root\n"},
			map[string]string{"nproc": all, "domain": "build-b.kiln.invalid\n", "home": "/home/kiln-b\n", "sh": "busybox\n",
				"personality": "00000000\n", "kernel": kernel, "user": "root\n", "group": "root\n"},
			"user,cpus,shell,aslr,kernel,user_group"},
	}
	for _, tt := range tests {
		t.Run(tt.job, func(t *testing.T) {
			g := cl.waitGroup(t, cl.executeTwins(t, tt.job), 3*time.Minute)
			for _, m := range g.Members {
				if m.State != api.StateSucceeded {
					t.Fatalf("member %s: %s %s\nconsole:\n%s", m.ID, m.State, m.Error, cl.console(t, m.ID))
				}
				if m.Variations[api.VariationKept] != tt.wantKept {
					t.Errorf("member %d records kept %q, want %q", m.Member, m.Variations[api.VariationKept], tt.wantKept)
				}
			}
			for i, want := range []map[string]string{tt.base, tt.varied} {
				for p, w := range want {
					if got := cl.artifact(t, &g.Members[i], p); got != w {
						t.Errorf("member %d %s = %q, want %q", i, p, got, w)
					}
				}
			}
		})
	}
}
