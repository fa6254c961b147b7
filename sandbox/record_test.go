package sandbox

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/kiln-build/kiln/errdefs"
)

func TestRecordRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		rec  runRecord
	}{
		{"cold clone", runRecord{Snapshot: "deb@3", Clone: "r1", Sandbox: "r1"}},
		{"warm task", runRecord{Snapshot: "deb@3", Clone: "warm-0a1b2c3d4e", Sandbox: "warm-0a1b2c3d4e"}},
		{"keyed", runRecord{Snapshot: "alpine@2024.1", Clone: "aaaaaaaa-5e5e5e5e-r1", Sandbox: "aaaaaaaa-5e5e5e5e-r1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := writeRecord(dir, tc.rec); err != nil {
				t.Fatal(err)
			}
			got, err := readRecord(dir, "r1")
			want := tc.rec
			want.Version = recordVersion
			if err != nil || got != want {
				t.Fatalf("read %+v, %v; want %+v", got, err, want)
			}
			if err := removeRecord(dir); err != nil {
				t.Fatal(err)
			}
			if _, err := readRecord(dir, "r1"); !errors.Is(err, errNoRecord) {
				t.Fatalf("after remove: %v, want errNoRecord", err)
			}
		})
	}
}

// Records kiln wrote before run.json, as text: they are still read.
func TestRecordLegacyShapes(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		want       runRecord
	}{
		{"two lines (cold)", "deb@3\nr1\n", runRecord{Snapshot: "deb@3", Clone: "r1", Sandbox: "r1"}},
		{"three lines (warm)", "deb@3\nwarm-0a1b2c3d4e\nwarm-0a1b2c3d4e\n",
			runRecord{Snapshot: "deb@3", Clone: "warm-0a1b2c3d4e", Sandbox: "warm-0a1b2c3d4e"}},
		{"no final newline", "deb@3\nr1", runRecord{Snapshot: "deb@3", Clone: "r1", Sandbox: "r1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "clone"), []byte(tc.text), 0o600); err != nil {
				t.Fatal(err)
			}
			if got, err := readRecord(dir, "r1"); err != nil || got != tc.want {
				t.Fatalf("read %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

// A record that cannot be trusted whole is refused, with no fields.
func TestRecordUntrusted(t *testing.T) {
	for _, tc := range []struct {
		name, file, text string
		want             error
	}{
		{"garbage", "run.json", "\x00\x01 not json", errdefs.ErrInvalid},
		{"trailing garbage", "run.json", `{"version":1,"snapshot":"deb@3","clone":"r1","sandbox":"r1"} x`, errdefs.ErrInvalid},
		{"newer version", "run.json", `{"version":2,"snapshot":"deb@3","clone":"r1","sandbox":"r1","also":"warm-1"}`, errdefs.ErrUnsupported},
		{"unknown field", "run.json", `{"version":1,"snapshot":"deb@3","clone":"r1","sandbox":"r1","also":"warm-1"}`, errdefs.ErrInvalid},
		{"no version", "run.json", `{"snapshot":"deb@3","clone":"r1","sandbox":"r1"}`, errdefs.ErrInvalid},
		{"path in id", "run.json", `{"version":1,"snapshot":"deb@3","clone":"../x","sandbox":"r1"}`, errdefs.ErrInvalid},
		{"no snapshot", "run.json", `{"version":1,"clone":"r1","sandbox":"r1"}`, errdefs.ErrInvalid},
		{"legacy one line", "clone", "deb@3\n", errdefs.ErrInvalid},
		{"legacy four lines", "clone", "deb@3\nr1\nr1\nwarm-1\n", errdefs.ErrInvalid},
		{"legacy path in id", "clone", "deb@3\n../../etc\n", errdefs.ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, tc.file), []byte(tc.text), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := readRecord(dir, "r1")
			if !errors.Is(err, tc.want) || errors.Is(err, errNoRecord) || got != (runRecord{}) {
				t.Fatalf("read %+v, %v; want no record and an error wrapping %v", got, err, tc.want)
			}
		})
	}
}

// Reap spares the clone and sandbox a kept run's record names, in either
// shape; a kept run whose record cannot be read whole spares every warm
// entry, never only its own key.
func TestReapSparesWhatKeptRecordNames(t *testing.T) {
	const warmA, warmB = "warm-aaaaaaaaaa", "warm-bbbbbbbbbb"
	for _, tc := range []struct {
		name, file, text string
		spared           []string // of warmA, warmB
	}{
		{"record", "run.json", `{"version":1,"snapshot":"i@1","clone":"warm-aaaaaaaaaa","sandbox":"warm-aaaaaaaaaa"}`, []string{warmA}},
		{"legacy three lines", "clone", "i@1\nwarm-aaaaaaaaaa\nwarm-aaaaaaaaaa\n", []string{warmA}},
		{"legacy two lines", "clone", "i@1\nrun\n", nil},
		{"garbage", "run.json", "{\"version\":1,\"clone\":", []string{warmA, warmB}},
		{"legacy garbage", "clone", "i@1 warm-aaaaaaaaaa", []string{warmA, warmB}},
		{"newer version", "run.json", `{"version":9,"snapshot":"i@1","clone":"run","sandbox":"run","more":["warm-bbbbbbbbbb"]}`, []string{warmA, warmB}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, st := newFakeRunner(t, nil)
			ctx := context.Background()
			all := []string{"run", warmA, warmB}
			for _, id := range all {
				if _, err := st.Clone(ctx, "i@1", id); err != nil {
					t.Fatal(err)
				}
				if err := os.MkdirAll(filepath.Join(r.RunsDir, id), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.WriteFile(filepath.Join(r.RunsDir, "run", tc.file), []byte(tc.text), 0o600); err != nil {
				t.Fatal(err)
			}
			var reaped []string
			r.Launcher = &fakeLauncher{reap: func(ctx context.Context, keep func(string) bool) error {
				for _, id := range all {
					if !keep(id) {
						reaped = append(reaped, id)
					}
				}
				return nil
			}}
			if err := r.Reap(ctx, func(run string) bool { return run == "run" }); err != nil {
				t.Fatal(err)
			}
			for _, id := range []string{warmA, warmB} {
				_, cloneLeft := st.m[id]
				_, dirErr := os.Stat(filepath.Join(r.RunsDir, id))
				spared := slices.Contains(tc.spared, id)
				if cloneLeft != spared || (dirErr == nil) != spared || slices.Contains(reaped, id) == spared {
					t.Errorf("%s: clone left %v, dir left %v, sandbox reaped %v; want spared %v",
						id, cloneLeft, dirErr == nil, slices.Contains(reaped, id), spared)
				}
			}
			if _, ok := st.m["run"]; !ok || slices.Contains(reaped, "run") {
				t.Error("the kept run's own clone or sandbox was reaped")
			}
		})
	}
}
