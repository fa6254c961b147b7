package web

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// style is the SGR state of a console: colours are xterm palette indexes
// (-1: default), so a span carries classes only and the page needs no
// inline styles (the Content-Security-Policy forbids them).
type style struct {
	fg, bg                    int16
	bold, dim, italic, underl bool
}

var plain = style{fg: -1, bg: -1}

func (s style) classes() string {
	var c []string
	if s.fg >= 0 {
		c = append(c, "f"+strconv.Itoa(int(s.fg)))
	}
	if s.bg >= 0 {
		c = append(c, "b"+strconv.Itoa(int(s.bg)))
	}
	if s.bold {
		c = append(c, "B")
	}
	if s.dim {
		c = append(c, "D")
	}
	if s.italic {
		c = append(c, "I")
	}
	if s.underl {
		c = append(c, "U")
	}
	return strings.Join(c, " ")
}

// encode is the style as a short token, so a live follow continues the
// colours where the previous answer left them.
func (s style) encode() string {
	f := 0
	for i, b := range []bool{s.bold, s.dim, s.italic, s.underl} {
		if b {
			f |= 1 << i
		}
	}
	return fmt.Sprintf("%d.%d.%d", s.fg, s.bg, f)
}

func decodeStyle(tok string) style {
	var fg, bg, f int
	if _, err := fmt.Sscanf(tok, "%d.%d.%d", &fg, &bg, &f); err != nil || fg < -1 || fg > 255 || bg < -1 || bg > 255 {
		return plain
	}
	return style{fg: int16(fg), bg: int16(bg), bold: f&1 != 0, dim: f&2 != 0, italic: f&4 != 0, underl: f&8 != 0}
}

// applySGR changes s by the parameters of one "ESC [ ... m" sequence.
func (s *style) applySGR(params string) {
	if params == "" {
		*s = plain
		return
	}
	ps := strings.FieldsFunc(params, func(r rune) bool { return r == ';' || r == ':' })
	num := func(i int) int {
		if i >= len(ps) {
			return -1
		}
		n, err := strconv.Atoi(ps[i])
		if err != nil {
			return -1
		}
		return n
	}
	for i := 0; i < len(ps); i++ {
		n := num(i)
		switch {
		case n == 0:
			*s = plain
		case n == 1:
			s.bold = true
		case n == 2:
			s.dim = true
		case n == 3:
			s.italic = true
		case n == 4:
			s.underl = true
		case n == 22:
			s.bold, s.dim = false, false
		case n == 23:
			s.italic = false
		case n == 24:
			s.underl = false
		case n >= 30 && n <= 37:
			s.fg = int16(n - 30)
		case n == 39:
			s.fg = -1
		case n >= 40 && n <= 47:
			s.bg = int16(n - 40)
		case n == 49:
			s.bg = -1
		case n >= 90 && n <= 97:
			s.fg = int16(n - 90 + 8)
		case n >= 100 && n <= 107:
			s.bg = int16(n - 100 + 8)
		case n == 38 || n == 48:
			c := int16(-1)
			switch num(i + 1) {
			case 5:
				if v := num(i + 2); v >= 0 && v <= 255 {
					c = int16(v)
				}
				i += 2
			case 2:
				r, g, b := num(i+2), num(i+3), num(i+4)
				if r >= 0 && g >= 0 && b >= 0 {
					c = cubeIndex(r, g, b)
				}
				i += 4
			}
			if c >= 0 {
				if n == 38 {
					s.fg = c
				} else {
					s.bg = c
				}
			}
		}
	}
}

// cubeIndex maps a 24-bit colour to the nearest of the xterm 6x6x6 cube.
func cubeIndex(r, g, b int) int16 {
	q := func(v int) int {
		v = min(max(v, 0), 255)
		if v < 48 {
			return 0
		}
		if v < 115 {
			return 1
		}
		return (v - 35) / 40
	}
	return int16(16 + 36*q(r) + 6*q(g) + q(b)) //nolint:gosec // G115: q is 0..5, so at most 231
}

// renderer turns console bytes into HTML, one line at a time: text is
// escaped, SGR colours become spans with classes, every other escape and
// control byte is dropped, and a carriage return inside a line starts it
// over (progress bars show their last state). Nothing of the job's output
// reaches the page except as escaped text.
type renderer struct {
	st   style
	line int // number of the next line
	buf  bytes.Buffer
}

// writeLine appends line n (without its '\n') to out as one anchored row.
// partial marks a line whose end has not arrived yet (a live follow
// replaces it later).
func (r *renderer) writeLine(out *bytes.Buffer, data []byte, partial bool) {
	n := r.line
	r.line++
	r.buf.Reset()
	cur := plain // the style of the open span
	open := false
	text := func(t []byte) {
		if len(t) == 0 {
			return
		}
		if r.st != cur || !open && r.st != plain {
			if open {
				r.buf.WriteString("</span>")
				open = false
			}
			if r.st != plain {
				r.buf.WriteString(`<span class="`)
				r.buf.WriteString(r.st.classes())
				r.buf.WriteString(`">`)
				open = true
			}
			cur = r.st
		}
		escapeText(&r.buf, t)
	}
	i, start := 0, 0
	for i < len(data) {
		c := data[i]
		if c >= 0x20 && c != 0x7f || c == '\t' {
			i++
			continue
		}
		text(data[start:i])
		switch c {
		case '\r':
			if i+1 < len(data) {
				// The terminal would overwrite the line from its start.
				if open {
					r.buf.WriteString("</span>")
					open = false
				}
				r.buf.Reset()
				cur = plain
			}
			i++
		case 0x1b:
			i = r.escape(data, i)
		default:
			i++
		}
		start = i
	}
	text(data[start:i])
	if open {
		r.buf.WriteString("</span>")
	}
	cls := "l"
	if partial {
		cls = "l partial"
	}
	fmt.Fprintf(out, `<span class="%s" id="L%d"><a class="n" href="#L%d" data-n="%d"></a>`, cls, n, n, n)
	out.Write(r.buf.Bytes())
	out.WriteString("\n</span>")
}

// escape consumes the escape sequence at data[i] (ESC) and returns the
// index after it, applying it when it is SGR.
func (r *renderer) escape(data []byte, i int) int {
	if i+1 >= len(data) {
		return len(data)
	}
	switch data[i+1] {
	case '[': // CSI: parameters, intermediates, one final byte
		j := i + 2
		for j < len(data) && data[j] >= 0x30 && data[j] <= 0x3f {
			j++
		}
		params := string(data[i+2 : j])
		for j < len(data) && data[j] >= 0x20 && data[j] <= 0x2f {
			j++
		}
		if j >= len(data) {
			return len(data)
		}
		if data[j] == 'm' && !strings.ContainsAny(params, "<=>?") {
			r.st.applySGR(params)
		}
		return j + 1
	case ']', 'P', '_', '^': // OSC and other strings: to BEL or ST
		for j := i + 2; j < len(data); j++ {
			if data[j] == 0x07 {
				return j + 1
			}
			if data[j] == 0x1b && j+1 < len(data) && data[j+1] == '\\' {
				return j + 2
			}
		}
		return len(data)
	}
	return i + 2
}

// escapeText writes t as HTML text: markup characters escaped, invalid
// UTF-8 replaced.
func escapeText(w *bytes.Buffer, t []byte) {
	for len(t) > 0 {
		c := t[0]
		if c < utf8.RuneSelf {
			switch c {
			case '<':
				w.WriteString("&lt;")
			case '>':
				w.WriteString("&gt;")
			case '&':
				w.WriteString("&amp;")
			case '"':
				w.WriteString("&#34;")
			case '\'':
				w.WriteString("&#39;")
			default:
				w.WriteByte(c)
			}
			t = t[1:]
			continue
		}
		r, n := utf8.DecodeRune(t)
		if r == utf8.RuneError && n <= 1 {
			w.WriteString("\uFFFD")
		} else {
			w.Write(t[:n])
		}
		t = t[n:]
	}
}

// renderLines renders data as lines numbered from first; the last line is
// partial when data does not end in '\n' (and final is false: at the end
// of a finished console the last line is whole).
func renderLines(out *bytes.Buffer, st style, first int, data []byte, final bool) style {
	r := renderer{st: st, line: first}
	for len(data) > 0 {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			r.writeLine(out, data, !final)
			break
		}
		r.writeLine(out, data[:i], false)
		data = data[i+1:]
	}
	return r.st
}

// paletteCSS is the xterm 256-colour palette as classes f0..f255 (text)
// and b0..b255 (background).
func paletteCSS() string {
	base := []string{"#000000", "#cd3131", "#0dbc79", "#e5e510", "#2472c8", "#bc3fbc", "#11a8cd", "#e5e5e5",
		"#666666", "#f14c4c", "#23d18b", "#f5f543", "#3b8eea", "#d670d6", "#29b8db", "#ffffff"}
	var b strings.Builder
	levels := []int{0, 95, 135, 175, 215, 255}
	for i := 0; i < 256; i++ {
		var hex string
		switch {
		case i < 16:
			hex = base[i] //nolint:gosec // G602: base has 16 entries
		case i < 232:
			c := i - 16
			hex = fmt.Sprintf("#%02x%02x%02x", levels[c/36], levels[c/6%6], levels[c%6])
		default:
			g := 8 + 10*(i-232)
			hex = fmt.Sprintf("#%02x%02x%02x", g, g, g)
		}
		fmt.Fprintf(&b, ".f%d{color:%s}.b%d{background:%s}\n", i, hex, i, hex)
	}
	return b.String()
}
