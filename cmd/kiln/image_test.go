//go:build linux

package main

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/kiln-build/kiln/internal/testsupport"
)

// The image commands end to end through the binary: what they print on
// stdout is what scripts capture.
func TestImageCommands(t *testing.T) {
	testsupport.NeedRoot(t)
	kiln := testsupport.BuildKiln(t)
	h := testsupport.NewHost(t, kiln, testsupport.StartContainerd(t), "")
	ref := regexp.MustCompile(`^bb@[0-9]{8}T[0-9]{6}Z\n$`)

	out := h.MustKiln(t, "image", "create", "-n", "bb", "-m", "busybox", "-q")
	if !ref.MatchString(out) {
		t.Fatalf("create printed %q, want the snapshot ref alone", out)
	}
	if _, errOut, code := h.Kiln(t, "image", "create", "-n", "bb", "-m", "busybox", "-q"); code == 0 || !strings.Contains(errOut, "exists") {
		t.Fatalf("second create of bb: exit %d, %q", code, errOut)
	}
	for _, bad := range [][]string{
		{"image", "create", "-n", "../x", "-m", "busybox"},
		{"image", "create", "-n", "x", "-m", "nosuch"},
		{"image", "create", "-n", "x", "-m", "tar=/nonexistent.tar"},
		{"image", "snapshots", "-n", "nosuch"},
		{"image", "delete", "-n", "nosuch"},
	} {
		if _, errOut, code := h.Kiln(t, bad...); code == 0 || strings.Count(strings.TrimSpace(errOut), "\n") > 1 {
			t.Errorf("%v: exit %d, stderr %q: want a short error", bad, code, errOut)
		}
	}
	second := h.MustKiln(t, "image", "update", "-n", "bb", "-q")
	if !ref.MatchString(second) || second == out {
		t.Fatalf("update printed %q after %q", second, out)
	}

	var snaps []struct{ Name, Version, Arch, Method, Parent string }
	if err := json.Unmarshal([]byte(h.MustKiln(t, "image", "snapshots", "-n", "bb", "--output", "json")), &snaps); err != nil {
		t.Fatal(err)
	}
	if len(snaps) != 2 || snaps[1].Parent != snaps[0].Version || snaps[0].Method != "busybox" || snaps[0].Arch == "" {
		t.Fatalf("snapshots: %+v", snaps)
	}
	var list []struct{ Name string }
	if err := json.Unmarshal([]byte(h.MustKiln(t, "image", "list", "--output", "json")), &list); err != nil || len(list) != 1 || list[0].Name != "bb" {
		t.Fatalf("list: %+v %v", list, err)
	}
	h.MustKiln(t, "image", "update", "-n", "bb", "-q", "--keep", "1")
	snaps = nil
	json.Unmarshal([]byte(h.MustKiln(t, "image", "snapshots", "-n", "bb", "--output", "json")), &snaps)
	if len(snaps) != 1 {
		t.Fatalf("--keep 1 left %d snapshots", len(snaps))
	}
	h.MustKiln(t, "image", "delete", "-n", "bb")
	if out := h.MustKiln(t, "image", "list", "--output", "json"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("list after delete: %q", out)
	}
}
