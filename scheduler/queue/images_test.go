package queue

import (
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
)

// pin is a server-held image version for the tests.
var pin = &api.ImageVersion{Name: "bookworm", Version: 3, Arch: "amd64", OS: "linux", TarDigest: "sha256:aa"}

// A run pinned to a server-held image version fits a host by the
// version's os and arch (natively or through qemu-user), not by the
// host's own images; an unpinned run still needs the host's image.
func TestMismatchImage(t *testing.T) {
	bare := &api.Facts{OS: "linux", Arch: "amd64", FreeSlots: 1}
	emul := &api.Facts{OS: "linux", Arch: "arm64", EmulatedArchs: []string{"amd64"}, FreeSlots: 1}
	foreign := &api.Facts{OS: "linux", Arch: "arm64", FreeSlots: 1}
	bsd := &api.Facts{OS: "freebsd", Arch: "amd64", FreeSlots: 1}
	labelled := &api.Facts{OS: "linux", Arch: "amd64", FreeSlots: 1, Labels: map[string]string{"pool": "a"}}
	job := &api.Job{Name: "j", Image: "bookworm"}
	armJob := &api.Job{Name: "j", Image: "bookworm", Arch: "arm64"}
	poolJob := &api.Job{Name: "j", Image: "bookworm", Constraints: api.Constraints{Labels: map[string]string{"pool": "b"}}}
	for _, tc := range []struct {
		name  string
		job   *api.Job
		pin   *api.ImageVersion
		facts *api.Facts
		want  Fit
	}{
		{"pinned on a host without images", job, pin, bare, FitOK},
		{"unpinned needs the host's image", job, nil, bare, FitImage},
		{"pinned, foreign arch through qemu-user", job, pin, emul, FitOK},
		{"pinned, foreign arch without qemu-user", job, pin, foreign, FitArch},
		{"the version's arch wins over the job's", armJob, pin, foreign, FitArch},
		{"pinned, other os", job, pin, bsd, FitOS},
		{"pinned still needs the labels", poolJob, pin, labelled, FitLabel},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := MismatchImage(tc.job, tc.pin, tc.facts); got != tc.want {
				t.Fatalf("MismatchImage = %v, want %v", got, tc.want)
			}
		})
	}
	if why, _ := RefusalImage(job, pin, foreign); why != "cannot run arch amd64 of image bookworm@3" {
		t.Fatalf("refusal %q", why)
	}
}

// holderFacts are a host's facts that hold pin (FleetImages) or not.
func holderFacts(holds bool) *api.Facts {
	f := &api.Facts{OS: "linux", Arch: "amd64", FreeSlots: 1}
	if holds {
		f.FleetImages = []string{"sha256:other", pin.TarDigest}
	}
	return f
}

// A pinned run offered while hosts wait goes to a host that holds its
// version, even one that waited less; with no holder waiting, to the
// longest-waiting host that must fetch it. An unpinned run keeps the
// longest-waiter order.
func TestLocalityOffer(t *testing.T) {
	for _, tc := range []struct {
		name    string
		run     *Run
		waiters []*Waiter // in waiting order
		want    string
	}{
		{"holder preferred", &Run{ID: 1, Job: testJob, Image: pin},
			[]*Waiter{NewWaiter("fetcher", holderFacts(false)), NewWaiter("holder", holderFacts(true))}, "holder"},
		{"no holder waits: a host fetches", &Run{ID: 1, Job: testJob, Image: pin},
			[]*Waiter{NewWaiter("fetcher", holderFacts(false)), NewWaiter("fetcher2", holderFacts(false))}, "fetcher"},
		{"a holder that cannot run it is passed over", &Run{ID: 1, Job: testJob, Image: &api.ImageVersion{Name: "x", Version: 1, Arch: "riscv64", OS: "linux", TarDigest: pin.TarDigest}},
			[]*Waiter{NewWaiter("holder", holderFacts(true))}, ""},
		{"unpinned: longest waiter", &Run{ID: 1, Job: testJob},
			[]*Waiter{NewWaiter("a", testFacts), NewWaiter("b", testFacts)}, "a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := New(time.Hour, time.Now)
			for _, w := range tc.waiters {
				if q := d.take(w); q != nil {
					t.Fatalf("empty queue handed run %d", q.ID)
				}
			}
			handed := d.Offer(tc.run)
			got := ""
			for _, w := range tc.waiters {
				select {
				case q := <-w.ch:
					if q.ID != tc.run.ID {
						t.Fatalf("%s got run %d", w.host, q.ID)
					}
					if got != "" {
						t.Fatalf("run handed to %s and %s", got, w.host)
					}
					got = w.host
				default:
				}
			}
			if got != tc.want || handed != (tc.want != "") {
				t.Fatalf("handed to %q (handed %v), want %q", got, handed, tc.want)
			}
		})
	}
}

// When an owner's slot frees (max_running), its queued pinned run goes
// to a waiting host that holds the version even if a host that would
// fetch it has waited longer; that host keeps waiting and gets the next
// run, which it must fetch since no holder is left waiting.
func TestLocalityPump(t *testing.T) {
	d := New(time.Hour, time.Now)
	d.SetLimits(func(string) Limits { return Limits{MaxRunning: 1} })
	d.Running(100, "o") // the owner is at its max_running
	d.Offer(&Run{ID: 1, Job: testJob, Image: pin, Owner: "o"})
	d.Offer(&Run{ID: 2, Job: testJob, Image: pin, Owner: "o"})
	fetcher, holder := NewWaiter("fetcher", holderFacts(false)), NewWaiter("holder", holderFacts(true))
	for _, w := range []*Waiter{fetcher, holder} {
		if q := d.take(w); q != nil {
			t.Fatalf("owner at max_running was handed run %d", q.ID)
		}
	}
	d.Done(100)
	select {
	case q := <-holder.ch:
		if q.ID != 1 {
			t.Fatalf("holder got run %d, want 1", q.ID)
		}
	default:
		t.Fatal("the holder got nothing")
	}
	select {
	case q := <-fetcher.ch:
		t.Fatalf("fetcher got run %d while the owner is at max_running", q.ID)
	default:
	}
	d.Done(1)
	select {
	case q := <-fetcher.ch:
		if q.ID != 2 {
			t.Fatalf("fetcher got run %d, want 2", q.ID)
		}
	default:
		t.Fatal("with no holder waiting, the fetcher got nothing")
	}
	if n := d.Depth(); n != 0 {
		t.Fatalf("%d runs left queued", n)
	}
}
