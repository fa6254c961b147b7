package api

import (
	"slices"
	"testing"
)

// TestVariationKeysCoverNames: every named variation says which keys it
// sets, so DifferedIn cannot silently leave one out.
func TestVariationKeysCoverNames(t *testing.T) {
	for _, n := range VariationNames {
		if len(VariationKeys[n]) == 0 {
			t.Errorf("variation %q has no keys in VariationKeys", n)
		}
	}
	if len(VariationKeys) != len(VariationNames) {
		t.Errorf("VariationKeys has %d names, VariationNames %d", len(VariationKeys), len(VariationNames))
	}
}

func TestDifferedIn(t *testing.T) {
	base := map[string]string{"TZ": "UTC", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", VariationUmask: "022", VariationHostname: "1"}
	with := func(kv ...string) map[string]string {
		m := map[string]string{}
		for k, v := range base {
			m[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	tests := []struct {
		name    string
		members []map[string]string
		want    []string
	}{
		{"one member", []map[string]string{base}, []string{}},
		{"same", []map[string]string{base, with()}, []string{}},
		{"time and hostname", []map[string]string{base, with(VariationTime, "+398d", VariationHostname, "2")}, []string{"hostname", "time"}},
		{"only LC_ALL counts as locale", []map[string]string{base, with("LC_ALL", "fr_CH.UTF-8")}, []string{"locale"}},
		{"third member differs", []map[string]string{base, with(), with(VariationShell, "bash")}, []string{"shell"}},
		{"kept list is not a variation", []map[string]string{base, with(VariationKept, "time")}, []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := DifferedIn(tt.members); !slices.Equal(got, tt.want) {
				t.Fatalf("DifferedIn = %q, want %q", got, tt.want)
			}
		})
	}
}
