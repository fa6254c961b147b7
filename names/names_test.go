package names

import (
	"strings"
	"testing"
)

func TestValid(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want bool
	}{
		{"hello", true}, {"a.b_c-d", true}, {"9lives", true}, {strings.Repeat("a", 63), true},
		{"", false}, {".", false}, {"..", false}, {"a..b", false}, {"a/b", false}, {"-x", false},
		{strings.Repeat("a", 64), false}, {"a b", false}, {"a\x00", false},
	} {
		t.Run(tc.in, func(t *testing.T) {
			if got := Valid(tc.in); got != tc.want {
				t.Fatalf("Valid(%q) = %v", tc.in, got)
			}
		})
	}
}

func TestValidImageRef(t *testing.T) {
	for in, want := range map[string]bool{"bookworm": true, "bookworm@20261121T1200": true, "a@": false, "@v": false, "a@b@c": false, "a/b@c": false} {
		if got := ValidImageRef(in); got != want {
			t.Errorf("ValidImageRef(%q) = %v", in, got)
		}
	}
}

func TestValidRelPath(t *testing.T) {
	for in, ok := range map[string]bool{"a": true, "a/b.txt": true, "": false, "/a": false, "\\a": false, "../a": false, "a/../b": false, "a//b": false, "a/./b": false, "a\x00": false} {
		if err := ValidRelPath(in); (err == nil) != ok {
			t.Errorf("ValidRelPath(%q) = %v", in, err)
		}
	}
}
