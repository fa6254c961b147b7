package web

import "strings"

// diffLine is one line of a unified line diff: Op is ' ', '+' or '-'.
type diffLine struct {
	Op   string
	Text string
}

// lineDiff is the line diff from a to b by longest common subsequence.
// Job files are small (a few hundred lines at most), so the quadratic
// table is fine; past maxDiffLines both sides are shown whole.
func lineDiff(a, b string) []diffLine {
	const maxDiffLines = 2000
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	if len(al) > maxDiffLines || len(bl) > maxDiffLines {
		var out []diffLine
		for _, l := range al {
			out = append(out, diffLine{"-", l})
		}
		for _, l := range bl {
			out = append(out, diffLine{"+", l})
		}
		return out
	}
	// lcs[i][j] is the LCS length of al[i:] and bl[j:].
	lcs := make([][]int, len(al)+1)
	for i := range lcs {
		lcs[i] = make([]int, len(bl)+1)
	}
	for i := len(al) - 1; i >= 0; i-- {
		for j := len(bl) - 1; j >= 0; j-- {
			if al[i] == bl[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var out []diffLine
	i, j := 0, 0
	for i < len(al) && j < len(bl) {
		switch {
		case al[i] == bl[j]:
			out = append(out, diffLine{" ", al[i]})
			i++
			j++
		case lcs[i+1][j] >= lcs[i][j+1]:
			out = append(out, diffLine{"-", al[i]})
			i++
		default:
			out = append(out, diffLine{"+", bl[j]})
			j++
		}
	}
	for ; i < len(al); i++ {
		out = append(out, diffLine{"-", al[i]})
	}
	for ; j < len(bl); j++ {
		out = append(out, diffLine{"+", bl[j]})
	}
	return out
}
