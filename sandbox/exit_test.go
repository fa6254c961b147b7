package sandbox

import "testing"

func TestExitOfCode(t *testing.T) {
	for _, tc := range []struct {
		code int
		want Exit
	}{
		{0, Exit{}},
		{42, Exit{Code: 42}},
		{128, Exit{Code: 128}},
		{137, Exit{Code: 137, Signal: "SIGKILL"}},
		{143, Exit{Code: 143, Signal: "SIGTERM"}},
		{255, Exit{Code: 255}},
	} {
		if got := ExitOfCode(tc.code); got != tc.want {
			t.Errorf("ExitOfCode(%d) = %+v, want %+v", tc.code, got, tc.want)
		}
	}
}
