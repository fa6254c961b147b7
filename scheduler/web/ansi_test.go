package web

import (
	"bytes"
	"strings"
	"testing"
)

func TestRenderLine(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"plain", "hello", "hello"},
		{"markup", `<a href="x">&'`, "&lt;a href=&#34;x&#34;&gt;&amp;&#39;"},
		{"red", "\x1b[31mred\x1b[0m", `<span class="f1">red</span>`},
		{"bright bg", "\x1b[1;97;104mX", `<span class="f15 b12 B">X</span>`},
		{"256", "\x1b[38;5;196mX\x1b[39mY", `<span class="f196">X</span>Y`},
		{"truecolor", "\x1b[38;2;255;0;0mX", `<span class="f196">X</span>`},
		{"reset in between", "\x1b[32ma\x1b[mb", `<span class="f2">a</span>b`},
		{"cursor moves dropped", "a\x1b[2Kb\x1b[?25lc", "abc"},
		{"osc dropped", "\x1b]8;;http://x\x1b\\link\x1b]8;;\x07", "link"},
		{"carriage return", "10%\r\x1b[33m100%", `<span class="f3">100%</span>`},
		{"trailing CR", "done\r", "done"},
		{"controls dropped", "a\x00b\x07c\td", "abc\td"},
		{"cut escape", "a\x1b[3", "a"},
		{"invalid utf8", "a\xffb", "a\uFFFDb"},
		{"private sgr ignored", "\x1b[>4;2mX", "X"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			r := renderer{st: plain, line: 7}
			r.writeLine(&out, []byte(tc.in), false)
			want := `<span class="l" id="L7"><a class="n" href="#L7" data-n="7"></a>` + tc.want + "\n</span>"
			if out.String() != want {
				t.Errorf("got  %q\nwant %q", out.String(), want)
			}
		})
	}
}

func TestStyleCarriesAcrossLines(t *testing.T) {
	var out bytes.Buffer
	st := renderLines(&out, plain, 1, []byte("\x1b[31ma\nb\x1b[0m\nc\n"), true)
	if !strings.Contains(out.String(), "</a><span class=\"f1\">b</span>\n</span>") || st != plain {
		t.Errorf("got %q (end style %+v)", out.String(), st)
	}
	if got := decodeStyle(style{fg: 3, bg: 200, bold: true, underl: true}.encode()); got != (style{fg: 3, bg: 200, bold: true, underl: true}) {
		t.Errorf("style round trip: %+v", got)
	}
	if decodeStyle("999.1.0") != plain || decodeStyle("junk") != plain {
		t.Error("a bad style token is not plain")
	}
}

func TestLineDiff(t *testing.T) {
	got := lineDiff("a\nb\nc", "a\nc\nd")
	var s []string
	for _, d := range got {
		s = append(s, d.Op+d.Text)
	}
	if strings.Join(s, ",") != " a,-b, c,+d" {
		t.Errorf("diff: %v", s)
	}
}
