package linux

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestIDRangesStale: a range record no start holds and whose container's
// idmapped mounts are gone is stale whoever's it is (a data dir gone for
// good): StaleRanges lists it, FreeStaleRange and the next acquire drop it.
// A record with its mounts, or held by a start in progress, stays.
func TestIDRangesStale(t *testing.T) {
	tmp := t.TempDir()
	mine := newIDRanges(filepath.Join(tmp, "userns"), filepath.Join(tmp, "idmap"), "/run/c.sock", "kiln", "me")
	gone := mine.of("gone")
	if err := os.Mkdir(mine.idmaps, 0o711); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	allAlive := func(context.Context) (map[string]bool, error) {
		return map[string]bool{"kiln-mounted": true, "kiln-starting": true, "kiln-dead": true}, nil
	}
	take := func(r idRanges, ctr string) (int, *os.File) {
		t.Helper()
		base, hold, err := r.acquire(ctx, ctr, allAlive)
		if err != nil {
			t.Fatal(err)
		}
		return int((base - usernsBase) / usernsSize), hold
	}
	// In this order: each acquire drops the stale records before it.
	mounted, hold := take(gone, "kiln-mounted")
	if err := os.Mkdir(gone.idmapsOf(gone.owner, "kiln-mounted"), 0o711); err != nil {
		t.Fatal(err)
	}
	hold.Close()
	starting, hold := take(gone, "kiln-starting")
	defer hold.Close()
	dead, hold := take(gone, "kiln-dead")
	hold.Close()

	c := &Containerd{ranges: mine}
	stale, err := c.StaleRanges()
	if err != nil {
		t.Fatal(err)
	}
	if len(stale) != 1 || stale[0] != (StaleRange{Range: dead, Owner: "gone", Container: "kiln-dead"}) {
		t.Fatalf("StaleRanges = %+v, want only range %d of kiln-dead", stale, dead)
	}
	for _, n := range []int{mounted, starting} {
		if err := c.FreeStaleRange(n); err != nil {
			t.Fatal(err)
		}
	}
	record := func(n int) string {
		b, _ := os.ReadFile(filepath.Join(mine.dir, strconv.Itoa(n)))
		return string(b)
	}
	for _, tt := range []struct {
		n   int
		ctr string
	}{{mounted, "kiln-mounted"}, {starting, "kiln-starting"}} {
		if !strings.Contains(record(tt.n), tt.ctr) {
			t.Errorf("record %d of %s was freed: %q", tt.n, tt.ctr, record(tt.n))
		}
	}

	t.Run("acquire takes it back", func(t *testing.T) {
		n, hold := take(mine, "kiln-new")
		defer hold.Close()
		if n != dead {
			t.Errorf("acquire took range %d, want %d (the stale one)", n, dead)
		}
	})
	t.Run("FreeStaleRange removes it", func(t *testing.T) {
		n, hold := take(gone, "kiln-dead2")
		hold.Close()
		if err := c.FreeStaleRange(n); err != nil {
			t.Fatal(err)
		}
		if r := record(n); r != "" {
			t.Errorf("record %d left: %q", n, r)
		}
	})
	t.Run("release goes by the container's owner", func(t *testing.T) {
		n, hold := take(gone, "kiln-other")
		hold.Close()
		if err := os.Mkdir(gone.idmapsOf(gone.owner, "kiln-other"), 0o711); err != nil {
			t.Fatal(err)
		}
		base := usernsBase + uint32(n)*usernsSize
		mine.release(base, "kiln-other")
		if record(n) == "" {
			t.Fatal("released another owner's record as its own")
		}
		mine.of("gone").release(base, "kiln-other")
		if r := record(n); r != "" {
			t.Errorf("record %d left: %q", n, r)
		}
	})
}
