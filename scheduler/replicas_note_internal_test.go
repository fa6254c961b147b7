package scheduler

import (
	"testing"
	"time"
)

// A queue notification carries the run's pin, read from the last colon
// though the owner holds colons; a malformed one is refused.
func TestQueueNoteRoundTrip(t *testing.T) {
	at := time.Unix(0, 1765000000123456789)
	for _, n := range []queueNote{
		{replica: "r1", id: 7, rev: 3, grp: 2, kind: "job", job: "hello", queuedAt: at, priority: -1, owner: "client:ci", image: "bookworm@3"},
		{replica: "r1", id: 8, rev: 1, kind: "job", job: "hello", queuedAt: at, owner: "admin"},
		{replica: "r2", id: 9, rev: 1, kind: "diffoscope", job: "x", queuedAt: at, owner: "group:a:b", image: "a.b-c@12"},
	} {
		got, ok := parseQueueNote(n.String())
		if !ok || got != n {
			t.Fatalf("%q parsed as %+v (%v), want %+v", n.String(), got, ok, n)
		}
	}
	for _, bad := range []string{"", "r1:7", "r1:x:3:0:job:1:0:hello:admin:", "no-colons"} {
		if _, ok := parseQueueNote(bad); ok {
			t.Fatalf("%q accepted", bad)
		}
	}
}
