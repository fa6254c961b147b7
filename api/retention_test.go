package api

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// TestJobFileRetention: a job file's [retention] table is read, and bad
// rules are refused naming the key.
func TestJobFileRetention(t *testing.T) {
	base := "name = \"j\"\nimage = \"i\"\nscript = \"true\"\n[retention]\n"
	for _, tc := range []struct {
		name, table string
		want        *Retention
		err         string
	}{
		{"both", "keep_last = 5\nkeep_for = \"30d\"\n", &Retention{KeepLast: 5, KeepFor: Age(30 * 24 * time.Hour)}, ""},
		{"hours", "keep_for = \"36h\"\n", &Retention{KeepFor: Age(36 * time.Hour)}, ""},
		{"negative keep_last", "keep_last = -1\n", nil, "keep_last"},
		{"bad age", "keep_for = \"3x\"\n", nil, "bad age"},
		{"negative age", "keep_for = \"-1h\"\n", nil, "bad age"},
		{"unknown key", "keep_first = 3\n", nil, "retention.keep_first"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j, err := ParseJobFile([]byte(base + tc.table))
			if tc.err != "" {
				if !errors.Is(err, ErrInvalidJob) || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, want an invalid job naming %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if *j.Retention != *tc.want {
				t.Fatalf("retention %+v, want %+v", *j.Retention, *tc.want)
			}
		})
	}
	// A job without the table has none: the server's rules apply whole.
	j, err := ParseJobFile([]byte("name = \"j\"\nimage = \"i\"\nscript = \"true\"\n"))
	if err != nil || j.Retention != nil {
		t.Fatalf("no table: %+v %v", j.Retention, err)
	}
}

// TestRetentionOver: a job's keys replace the server's one by one.
func TestRetentionOver(t *testing.T) {
	server := Retention{KeepLast: 10, KeepFor: Age(time.Hour)}
	if got := server.Over(&Retention{KeepLast: 2}); got != (Retention{KeepLast: 2, KeepFor: Age(time.Hour)}) {
		t.Fatalf("over keep_last: %+v", got)
	}
	if got := server.Over(nil); got != server {
		t.Fatalf("over nothing: %+v", got)
	}
	if !(Retention{}).KeepsAll() || server.KeepsAll() {
		t.Fatal("KeepsAll")
	}
}
