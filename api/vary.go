package api

import (
	"slices"
)

// VariationKeys are the keys of Run.Variations each named variation
// (VariationNames) sets.
var VariationKeys = map[string][]string{
	"timezone":   {"TZ"},
	"locale":     {"LANG", "LC_ALL"},
	"umask":      {VariationUmask},
	"user":       {VariationUser},
	"build_path": {VariationCwd},
	"hostname":   {VariationHostname},
	"cpus":       {VariationCPUs},
	"domain":     {VariationDomain},
	"home":       {VariationHome},
	"shell":      {VariationShell},
	"aslr":       {VariationASLR},
	"kernel":     {VariationKernel},
	"user_group": {VariationUserGroup},
	"time":       {VariationTime},
}

// DifferedIn names, in VariationNames order, the variations in which
// some member's recorded variations differ from the first member's:
// what a group's verdict covers.
func DifferedIn(members []map[string]string) []string {
	out := []string{}
	if len(members) < 2 {
		return out
	}
	for _, n := range VariationNames {
		if slices.ContainsFunc(members[1:], func(m map[string]string) bool {
			return slices.ContainsFunc(VariationKeys[n], func(k string) bool { return m[k] != members[0][k] })
		}) {
			out = append(out, n)
		}
	}
	return out
}
