package web

import (
	"bytes"
	"regexp"
	"testing"
	"unicode/utf8"
)

// consoleTag is every piece of markup the renderer may write: a line's row
// and anchor, a style's span, a span's end. Anything else that reaches the
// page must be escaped text.
var consoleTag = regexp.MustCompile(`^(?:<span class="l(?: partial)?" id="L\d+"><a class="n" href="#L\d+" data-n="\d+"></a>|<span class="[fb]\d{1,3}(?: [fb]\d{1,3})*(?: [BDIU])*">|<span class="[BDIU](?: [BDIU])*">|</span>)`)

// textRun is escaped text: no markup character, "&" only as an entity.
var textRun = regexp.MustCompile(`^(?:[^<>"'&]|&(?:lt|gt|amp|#34|#39);)+`)

// FuzzRenderConsole: a job writes its console, the web UI renders it.
// Whatever the bytes (and whatever style token a follow request carries),
// the HTML is only the renderer's own tags around escaped, valid UTF-8
// text, every span is closed, and there is one row per line.
func FuzzRenderConsole(f *testing.F) {
	f.Add([]byte("plain\n"), "0.0.0")
	f.Add([]byte("\x1b[1;31m<script>alert(1)</script>\x1b[0m\n"), "-1.-1.0")
	f.Add([]byte("\x1b[38;2;255;0;0m\"x\" onmouseover='y'&amp;\r\x1b[48;5;300mZ"), "3.200.15")
	f.Add([]byte("\x1b]8;;javascript:alert(1)\x07link\x1b]8;;\x1b\\\n\x1b[\xff<m"), "junk")
	f.Add([]byte("a\x1b[38;5\nb\x1b[2;38;2;1;2mc\r\n\x00\x7f\xc0\xaf<"), "999.1.0")
	f.Fuzz(func(t *testing.T, data []byte, tok string) {
		var out bytes.Buffer
		end := renderLines(&out, decodeStyle(tok), 1, data, false)
		if end.fg < -1 || end.fg > 255 || end.bg < -1 || end.bg > 255 {
			t.Fatalf("end style out of range: %+v", end)
		}
		if decodeStyle(end.encode()) != end {
			t.Fatalf("style %+v does not survive its token %q", end, end.encode())
		}
		html := out.Bytes()
		if !utf8.Valid(html) {
			t.Fatalf("invalid UTF-8 in %q", html)
		}
		depth, rows := 0, 0
		for rest := html; len(rest) > 0; {
			if m := consoleTag.Find(rest); m != nil {
				switch {
				case bytes.Equal(m, []byte("</span>")):
					depth--
				default:
					depth++
				}
				if bytes.HasPrefix(m, []byte(`<span class="l`)) {
					rows++
				}
				rest = rest[len(m):]
				continue
			}
			if m := textRun.Find(rest); m != nil {
				rest = rest[len(m):]
				continue
			}
			t.Fatalf("raw markup from the console at %q\nin %q", rest[:min(len(rest), 40)], html)
		}
		if depth != 0 {
			t.Fatalf("%d spans left open in %q", depth, html)
		}
		if want := bytes.Count(data, []byte("\n")); len(data) > 0 && data[len(data)-1] != '\n' {
			want++
			if rows != want {
				t.Fatalf("%d rows for %d lines", rows, want)
			}
		} else if rows != want {
			t.Fatalf("%d rows for %d lines", rows, want)
		}
	})
}
