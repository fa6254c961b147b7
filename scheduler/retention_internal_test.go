package scheduler

import (
	"slices"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
)

// TestPlanRetention: the rules of docs/retention.md, each case with the
// runs that must go.
func TestPlanRetention(t *testing.T) {
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	ago := func(d time.Duration) int64 { return now.Add(-d).UnixNano() }
	day := 24 * time.Hour
	// Job a: runs 1..5, finished 5..1 days ago (run 5 the newest).
	jobA := []finishedRun{}
	for i := int64(1); i <= 5; i++ {
		jobA = append(jobA, finishedRun{id: i, job: "a", finished: ago(time.Duration(6-i) * day)})
	}
	with := func(base []finishedRun, more ...finishedRun) []finishedRun {
		return append(slices.Clone(base), more...)
	}
	kept := func(rs []finishedRun, id int64) []finishedRun {
		rs = slices.Clone(rs)
		for i := range rs {
			if rs[i].id == id {
				rs[i].kept = true
			}
		}
		return rs
	}
	for _, tc := range []struct {
		name   string
		runs   []finishedRun
		live   map[int64]bool
		server api.Retention
		jobs   map[string]*api.Retention
		gone   []int64
	}{
		{"no rule keeps all", jobA, nil, api.Retention{}, nil, nil},
		{"keep_last 2", jobA, nil, api.Retention{KeepLast: 2}, nil, []int64{1, 2, 3}},
		{"keep_for 3d", jobA, nil, api.Retention{KeepFor: api.Age(3*day - time.Minute)}, nil, []int64{1, 2, 3}},
		{"either keeps", jobA, nil, api.Retention{KeepLast: 1, KeepFor: api.Age(3*day + time.Minute)}, nil, []int64{1, 2}},
		{"kiln run keep", kept(jobA, 1), nil, api.Retention{KeepLast: 2}, nil, []int64{2, 3}},
		{"job rule replaces the server's key", jobA, nil, api.Retention{KeepLast: 2},
			map[string]*api.Retention{"a": {KeepLast: 4}}, []int64{1}},
		{"job rule adds a key", jobA, nil, api.Retention{KeepLast: 1},
			map[string]*api.Retention{"a": {KeepFor: api.Age(3*day + time.Minute)}}, []int64{1, 2}},
		{"per job", with(jobA, finishedRun{id: 6, job: "b", finished: ago(30 * day)}), nil, api.Retention{KeepLast: 1}, nil, []int64{1, 2, 3, 4}},
		{"a group is kept whole", with(jobA,
			finishedRun{id: 10, job: "g", grp: 7, finished: ago(9 * day)},
			finishedRun{id: 11, job: "g", grp: 7, finished: ago(9 * day)},
			finishedRun{id: 12, job: "g", kind: api.KindDiffoscope, grp: 7, finished: ago(9 * day)}),
			nil, api.Retention{KeepLast: 1}, nil, []int64{1, 2, 3, 4}},
		{"a group goes whole", with(jobA,
			finishedRun{id: 10, job: "g", grp: 7, finished: ago(9 * day)},
			finishedRun{id: 11, job: "g", grp: 7, finished: ago(9 * day)},
			finishedRun{id: 12, job: "g", kind: api.KindDiffoscope, grp: 7, finished: ago(9 * day)},
			finishedRun{id: 13, job: "g", finished: ago(time.Hour)}),
			nil, api.Retention{KeepLast: 1}, nil, []int64{1, 2, 3, 4, 10, 11, 12}},
		{"a group with a member not finished stays", with(jobA,
			finishedRun{id: 10, job: "g", grp: 7, finished: ago(9 * day)},
			finishedRun{id: 13, job: "g", finished: ago(time.Hour)}),
			map[int64]bool{7: true}, api.Retention{KeepLast: 1}, nil, []int64{1, 2, 3, 4}},
		{"a kept diffoscope task keeps its group", with(jobA,
			finishedRun{id: 10, job: "g", grp: 7, finished: ago(9 * day)},
			finishedRun{id: 12, job: "g", kind: api.KindDiffoscope, grp: 7, finished: ago(9 * day), kept: true},
			finishedRun{id: 13, job: "g", finished: ago(time.Hour)}),
			nil, api.Retention{KeepLast: 1}, nil, []int64{1, 2, 3, 4}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []int64
			for _, r := range planRetention(tc.runs, tc.live, tc.server, tc.jobs, now) {
				got = append(got, r.id)
			}
			if !slices.Equal(got, tc.gone) {
				t.Fatalf("gone %v, want %v", got, tc.gone)
			}
		})
	}
}

// TestParseAge: keep_for's days and Go durations; bad ages are refused.
func TestParseAge(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		bad  bool
	}{
		{"30d", 30 * 24 * time.Hour, false},
		{"1d12h", 36 * time.Hour, false},
		{"90m", 90 * time.Minute, false},
		{"", 0, true},
		{"d", 0, true},
		{"-1d", 0, true},
		{"3x", 0, true},
		{"1d-1h", 0, true},
	} {
		got, err := api.ParseAge(tc.in)
		if (err != nil) != tc.bad || (!tc.bad && got.Std() != tc.want) {
			t.Errorf("ParseAge(%q) = %v, %v; want %v (bad %v)", tc.in, got.Std(), err, tc.want, tc.bad)
		}
	}
}
