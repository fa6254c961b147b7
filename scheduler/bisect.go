package scheduler

import (
	"slices"
	"strings"
)

// Bisect of a not-reproducible group (issue #33): rerun pairs with subsets
// of the variations the group varied to find a smallest set that still
// makes the outputs differ. This file is the search alone, a pure function
// of the results so far, so that a driver can persist the results and
// replay it after a restart; queuing the pairs is the driver's.
//
// The search is QuickXplain-like over the ordered names: first the pair
// with nothing varied (if it differs, the hosts differ, and no variation
// is to blame); then, with the culprits found so far always varied, a
// binary search for the shortest prefix of the other names that makes the
// pair differ; its last name is a culprit. That assumes that varying more
// never makes a differing pair equal (monotone), which holds for
// variations that each add a difference. After the pairs with nothing
// and with everything varied, each culprit costs at most ceil(log2(n))+1
// pairs (the search, then whether the culprits alone differ), so a single
// culprit among 14 variations takes at most 7 pairs in all;
// maxBisectTrials bounds the rest.

// maxBisectTrials bounds the pairs one bisect queues.
const maxBisectTrials = 16

// bisectOutcome is what a finished search found.
type bisectOutcome struct {
	// Culprits is a smallest set of variations (in the order given) that
	// makes the pair differ; empty with HostsDiffer or Inconclusive.
	Culprits []string
	// HostsDiffer: the pair differs with nothing varied.
	HostsDiffer bool
	// Inconclusive: the pair with every variation no longer differs (a
	// flaky build), or the trial bound was reached; Culprits holds what
	// was found before.
	Inconclusive bool
}

// bisectKey is how a trial's varied set is recorded: its names, sorted,
// comma-separated ("" for nothing varied).
func bisectKey(varied []string) string {
	return strings.Join(slices.Sorted(slices.Values(varied)), ",")
}

// bisectNext replays the search over names with the results known so far
// (bisectKey -> the pair's outputs differ). It returns either the next set
// to try (next != nil, which may be empty: nothing varied) or the outcome.
func bisectNext(names []string, known map[string]bool) (next []string, out *bisectOutcome) {
	asked := 0
	ask := func(varied []string) (differs, ok bool) {
		differs, ok = known[bisectKey(varied)]
		if !ok {
			next = slices.Clone(varied)
			if next == nil {
				next = []string{}
			}
		}
		asked++
		return differs, ok
	}
	bounded := func() bool { return asked >= maxBisectTrials }
	differs, ok := ask(nil)
	if !ok {
		return next, nil
	}
	if differs {
		return nil, &bisectOutcome{HostsDiffer: true}
	}
	all := slices.Clone(names)
	if differs, ok := ask(all); !ok {
		return next, nil
	} else if !differs {
		return nil, &bisectOutcome{Inconclusive: true}
	}
	var culprits []string
	rest := slices.Clone(names)
	for len(rest) > 0 {
		if len(culprits) > 0 {
			// Are the culprits found enough on their own?
			if bounded() {
				return nil, &bisectOutcome{Culprits: culprits, Inconclusive: true}
			}
			differs, ok := ask(culprits)
			if !ok {
				return next, nil
			}
			if differs {
				break
			}
		}
		// The shortest prefix of rest that, with the culprits, differs:
		// varying all of rest does (it did before the last culprit was
		// taken out of it, by monotonicity).
		lo, hi := 1, len(rest)
		for lo < hi {
			if bounded() {
				return nil, &bisectOutcome{Culprits: culprits, Inconclusive: true}
			}
			mid := (lo + hi) / 2
			differs, ok := ask(append(slices.Clone(culprits), rest[:mid]...))
			if !ok {
				return next, nil
			}
			if differs {
				hi = mid
			} else {
				lo = mid + 1
			}
		}
		culprits = append(culprits, rest[lo-1])
		rest = rest[:lo-1]
	}
	// Report the culprits in the order of names.
	slices.SortFunc(culprits, func(a, b string) int {
		return slices.Index(names, a) - slices.Index(names, b)
	})
	return nil, &bisectOutcome{Culprits: culprits}
}
