package zfsstore_test

import (
	"context"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/kiln-build/kiln/internal/testsupport"
	"github.com/kiln-build/kiln/sandbox"
	"github.com/kiln-build/kiln/sandbox/storagetest"
	"github.com/kiln-build/kiln/zfsstore"
)

func TestZFSContract(t *testing.T) {
	parent := testsupport.ZFS(t)
	n := 0
	storagetest.Run(t, func(t *testing.T) sandbox.Backend {
		n++
		ds := fmt.Sprintf("%s/t%d", parent, n)
		if out, err := exec.Command("zfs", "create", ds).CombinedOutput(); err != nil {
			t.Fatalf("zfs create %s: %v: %s", ds, err, out)
		}
		z, err := zfsstore.New(context.Background(), ds)
		if err != nil {
			t.Fatal(err)
		}
		return z
	})
}

// A dataset under parent/runs that kiln did not make (no kiln:run, or one
// naming another run) is never listed nor destroyed.
func TestZFSLeavesForeignDatasets(t *testing.T) {
	parent := testsupport.ZFS(t)
	z, err := zfsstore.New(context.Background(), parent)
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"create", parent + "/runs/foreign"},
		{"create", "-o", "kiln:run=other", parent + "/runs/impostor"},
	} {
		if out, err := exec.Command("zfs", args...).CombinedOutput(); err != nil {
			t.Fatalf("zfs %v: %v: %s", args, err, out)
		}
	}
	cs, err := z.List(t.Context())
	if err != nil || len(cs) != 0 {
		t.Errorf("List = %v, %v; want no clones", cs, err)
	}
	for _, run := range []string{"foreign", "impostor"} {
		if err := z.Destroy(t.Context(), run); err == nil {
			t.Errorf("Destroy(%s) of a dataset kiln did not make: nil error", run)
		}
		if err := exec.Command("zfs", "list", parent+"/runs/"+run).Run(); err != nil {
			t.Errorf("dataset %s is gone: %v", run, err)
		}
	}
}

func TestNewRejects(t *testing.T) {
	parent := testsupport.ZFS(t)
	for _, p := range []string{"", "/abs", parent + "/missing", parent + "@snap"} {
		t.Run(fmt.Sprintf("%q", p), func(t *testing.T) {
			if _, err := zfsstore.New(context.Background(), p); err == nil {
				t.Errorf("New(%q) = nil error", p)
			}
		})
	}
}

// TestZFSCloneProperties: a run's clone has setuid=off and devices=off.
func TestZFSCloneProperties(t *testing.T) {
	parent := testsupport.ZFS(t)
	z, err := zfsstore.New(context.Background(), parent)
	if err != nil {
		t.Fatal(err)
	}
	b, err := z.Begin(t.Context(), "img", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := z.Commit(t.Context(), b, "v1"); err != nil {
		t.Fatal(err)
	}
	if _, err := z.Clone(t.Context(), "img@v1", "run1"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { z.Destroy(context.Background(), "run1") })
	out, err := exec.Command("zfs", "get", "-H", "-o", "value", "setuid,devices", parent+"/runs/run1").CombinedOutput()
	if err != nil {
		t.Fatalf("zfs get: %v: %s", err, out)
	}
	if got := strings.Fields(string(out)); !slices.Equal(got, []string{"off", "off"}) {
		t.Fatalf("setuid,devices = %v, want off off", got)
	}
}
