package web

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kiln-build/kiln/api"
)

// consoleWindow is how many console bytes the run page shows at once: the
// tail by default, with links to page back and forth. A 64 MiB console
// opens as fast as a small one.
const consoleWindow = 256 << 10

// followWait bounds one live-follow long-poll.
const followWait = 25 * time.Second

// maxSearchHits bounds the lines a console search lists.
const maxSearchHits = 500

// errStop ends a ScanLog early.
var errStop = errors.New("stop")

// consoleView is the rendered part of a console the run page shows.
type consoleView struct {
	Attempt    int
	Attempts   []int
	HTML       template.HTML
	Start, End int64 // byte range shown (End: where a live follow goes on)
	Have       int64 // bytes read, a live console's partial last line included
	Size       int64
	FirstLine  int
	NextLine   int    // number of the line at End (a live follow continues there)
	Style      string // SGR state at End
	Live       bool   // the shown attempt may still grow
	Truncated  bool
	Earlier    string // link to the window before, "" at the start
	Later      string // link to the window after, "" at the end
}

// indexStep is the distance between the checkpoints of a lineIndex.
const indexStep = 1 << 20

// lineIndex remembers, per console attempt, how many lines come before
// each multiple of indexStep, so that numbering a window deep in a large
// console reads at most indexStep bytes once the console was indexed.
// Console bytes never change once stored (a new attempt is a new
// console), so an entry never goes stale; it only grows.
type lineIndex struct {
	mu sync.Mutex
	m  map[indexKey]*consoleIndex
}

type indexKey struct {
	run     string
	attempt int
}

type consoleIndex struct {
	mu sync.Mutex
	cp []int // cp[i]: newlines in bytes [0, i*indexStep)
}

// maxIndexed bounds the consoles indexed at a time (a few KiB each).
const maxIndexed = 4096

func (x *lineIndex) get(run string, attempt int) *consoleIndex {
	x.mu.Lock()
	defer x.mu.Unlock()
	k := indexKey{run, attempt}
	ci := x.m[k]
	if ci == nil {
		if x.m == nil || len(x.m) >= maxIndexed {
			x.m = map[indexKey]*consoleIndex{}
		}
		ci = &consoleIndex{cp: []int{0}}
		x.m[k] = ci
	}
	return ci
}

// extend indexes the console up to checkpoint k (k*indexStep must not be
// past its stored size). Called with ci.mu held.
func (ci *consoleIndex) extend(ctx context.Context, h *Handler, v Viewer, id string, attempt, k int) error {
	if len(ci.cp) > k {
		return nil
	}
	pos := int64(len(ci.cp)-1) * indexStep
	cur := ci.cp[len(ci.cp)-1]
	err := h.b.ScanLog(ctx, v, id, attempt, pos, func(d []byte) error {
		for len(d) > 0 {
			next := int64(len(ci.cp)) * indexStep
			if pos+int64(len(d)) < next {
				cur += bytes.Count(d, []byte{'\n'})
				pos += int64(len(d))
				return nil
			}
			cur += bytes.Count(d[:next-pos], []byte{'\n'})
			d, pos = d[next-pos:], next
			ci.cp = append(ci.cp, cur)
			if len(ci.cp) > k {
				return errStop
			}
		}
		return nil
	})
	if errors.Is(err, errStop) {
		err = nil
	}
	return err
}

// countNewlines counts '\n' in [from, upTo) of the console.
func (h *Handler) countNewlines(ctx context.Context, v Viewer, id string, attempt int, from, upTo int64) (int, error) {
	n, pos := 0, from
	if from >= upTo {
		return 0, nil
	}
	err := h.b.ScanLog(ctx, v, id, attempt, from, func(d []byte) error {
		if pos+int64(len(d)) >= upTo {
			n += bytes.Count(d[:upTo-pos], []byte{'\n'})
			return errStop
		}
		n += bytes.Count(d, []byte{'\n'})
		pos += int64(len(d))
		return nil
	})
	if errors.Is(err, errStop) {
		err = nil
	}
	return n, err
}

// countLines is the number of '\n' in the attempt's console before upTo.
func (h *Handler) countLines(ctx context.Context, v Viewer, id string, attempt int, upTo int64) (int, error) {
	ci := h.index.get(id, attempt)
	ci.mu.Lock()
	defer ci.mu.Unlock()
	k := int(upTo / indexStep)
	if err := ci.extend(ctx, h, v, id, attempt, k); err != nil {
		return 0, err
	}
	n, err := h.countNewlines(ctx, v, id, attempt, int64(k)*indexStep, upTo)
	return ci.cp[k] + n, err
}

// lineOffset is the byte offset where line n (1-based) starts; the size
// when the console has fewer lines.
func (h *Handler) lineOffset(ctx context.Context, v Viewer, id string, attempt, n int, size int64) (int64, error) {
	if n <= 1 {
		return 0, nil
	}
	ci := h.index.get(id, attempt)
	ci.mu.Lock()
	if err := ci.extend(ctx, h, v, id, attempt, int(size/indexStep)); err != nil {
		ci.mu.Unlock()
		return 0, err
	}
	// The last checkpoint with fewer than n-1 newlines before it: the
	// (n-1)th newline is at or after it.
	i := sort.Search(len(ci.cp), func(i int) bool { return ci.cp[i] >= n-1 }) - 1
	seen := ci.cp[i]
	ci.mu.Unlock()
	pos, found := int64(i)*indexStep, int64(-1)
	err := h.b.ScanLog(ctx, v, id, attempt, pos, func(d []byte) error {
		for j := 0; ; {
			k := bytes.IndexByte(d[j:], '\n')
			if k < 0 {
				break
			}
			j += k + 1
			seen++
			if seen == n-1 {
				found = pos + int64(j)
				return errStop
			}
		}
		pos += int64(len(d))
		return nil
	})
	if errors.Is(err, errStop) {
		err = nil
	}
	if found < 0 {
		found = size
	}
	return found, err
}

// console renders the window of the console that the query asks for:
// ?line=N (around line N), ?before=O (the window ending at O), ?from=O
// (the window starting at O), else the tail.
func (h *Handler) console(ctx context.Context, v Viewer, r *api.Run, form map[string][]string) (*consoleView, error) {
	get := func(k string) string {
		if vs := form[k]; len(vs) > 0 {
			return vs[0]
		}
		return ""
	}
	attempt := r.Attempt
	if a := get("attempt"); a != "" {
		n, err := strconv.Atoi(a)
		if err != nil || n < 1 || n > r.Attempt {
			return nil, statusError{http.StatusBadRequest, fmt.Sprintf("attempt %q: run %s has attempts 1 to %d", a, r.ID, r.Attempt)}
		}
		attempt = n
	}
	info, err := h.b.ReadLog(ctx, v, r.ID, attempt, 0, 0, 0)
	if err != nil {
		return nil, err
	}
	size := info.Size
	cv := &consoleView{Attempt: attempt, Size: size, Truncated: info.Truncated && attempt == info.RunAttempt,
		Live: attempt == info.RunAttempt && !api.Terminal(info.State)}
	for i := 1; i <= r.Attempt; i++ {
		cv.Attempts = append(cv.Attempts, i)
	}
	parseOff := func(k string) (int64, bool, error) {
		s := get(k)
		if s == "" {
			return 0, false, nil
		}
		o, err := strconv.ParseInt(s, 10, 64)
		if err != nil || o < 0 || o > size {
			return 0, false, statusError{http.StatusBadRequest, fmt.Sprintf("%s %q: want a byte offset within the console (%d bytes)", k, s, size)}
		}
		return o, true, nil
	}
	var start, end int64
	alignStart := false // skip the partial first line of a window cut mid-line
	if ln := get("line"); ln != "" {
		n, err := strconv.Atoi(ln)
		if err != nil || n < 1 {
			return nil, statusError{http.StatusBadRequest, fmt.Sprintf("line %q: want a line number", ln)}
		}
		// A few lines of context above the line asked for.
		if start, err = h.lineOffset(ctx, v, r.ID, attempt, max(1, n-20), size); err != nil {
			return nil, err
		}
		end = min(size, start+consoleWindow)
	} else if o, ok, err := parseOff("from"); err != nil {
		return nil, err
	} else if ok {
		start, end = o, min(size, o+consoleWindow)
	} else {
		end = size
		if o, ok, err := parseOff("before"); err != nil {
			return nil, err
		} else if ok {
			end = o
		}
		start = max(0, end-consoleWindow)
		alignStart = start > 0
	}
	var data []byte
	for off := start; off < end; {
		c, err := h.b.ReadLog(ctx, v, r.ID, attempt, off, int(end-off), 0)
		if err != nil {
			return nil, err
		}
		if len(c.Data) == 0 {
			break
		}
		data = append(data, c.Data...)
		off += int64(len(c.Data))
	}
	end = start + int64(len(data))
	if alignStart {
		if i := bytes.IndexByte(data, '\n'); i >= 0 && i+1 < len(data) {
			data, start = data[i+1:], start+int64(i+1)
		}
	}
	if end < size {
		// Cut at the last whole line; the next window starts there.
		if i := bytes.LastIndexByte(data, '\n'); i >= 0 {
			data, end = data[:i+1], start+int64(i+1)
		}
	}
	first := 0
	if start > 0 {
		if first, err = h.countLines(ctx, v, r.ID, attempt, start); err != nil {
			return nil, err
		}
	}
	cv.Start, cv.End, cv.FirstLine = start, end, first+1
	var out bytes.Buffer
	final := end < size || !cv.Live
	// The partial last line of a live console is rendered but not
	// counted: the follow re-renders it from its start.
	whole := data
	if !final {
		if i := bytes.LastIndexByte(data, '\n'); i >= 0 {
			whole = data[:i+1]
		} else {
			whole = nil
		}
	}
	st := renderLines(&out, plain, cv.FirstLine, whole, true)
	cv.NextLine = cv.FirstLine + bytes.Count(whole, []byte{'\n'})
	cv.Style = st.encode()
	if tail := data[len(whole):]; len(tail) > 0 {
		renderLines(&out, st, cv.NextLine, tail, false)
	}
	cv.End, cv.Have = start+int64(len(whole)), end
	if final {
		cv.End = end
	}
	cv.HTML = template.HTML(out.String()) //nolint:gosec // G203: renderLines escapes every byte of job output
	base := fmt.Sprintf("/runs/%s?attempt=%d", r.ID, attempt)
	if start > 0 {
		cv.Earlier = fmt.Sprintf("%s&before=%d", base, start)
	}
	if end < size {
		cv.Later = fmt.Sprintf("%s&from=%d", base, end)
	}
	return cv, nil
}

// searchHit is one console line that matches a search.
type searchHit struct {
	Line int
	HTML template.HTML
}

// searchConsole lists the lines of the attempt whose text (colours and
// other escapes left out) contains q, case-insensitively.
func (h *Handler) searchConsole(ctx context.Context, v Viewer, id string, attempt int, q string) ([]searchHit, bool, error) {
	var hits []searchHit
	needle := bytes.ToLower([]byte(q))
	line := 1
	var carry []byte
	more := false
	check := func(l []byte) error {
		if bytes.Contains(bytes.ToLower(plainText(l)), needle) {
			if len(hits) == maxSearchHits {
				more = true
				return errStop
			}
			var out bytes.Buffer
			renderLines(&out, plain, line, l, true)
			hits = append(hits, searchHit{Line: line, HTML: template.HTML(out.String())}) //nolint:gosec // G203: escaped by renderLines
		}
		line++
		return nil
	}
	err := h.b.ScanLog(ctx, v, id, attempt, 0, func(d []byte) error {
		for {
			i := bytes.IndexByte(d, '\n')
			if i < 0 {
				carry = append(carry, d...)
				return nil
			}
			l := d[:i]
			if len(carry) > 0 {
				carry = append(carry, l...)
				l = carry
			}
			if err := check(l); err != nil {
				return err
			}
			carry = carry[:0]
			d = d[i+1:]
		}
	})
	if err == nil && len(carry) > 0 {
		err = check(carry)
	}
	if errors.Is(err, errStop) {
		err = nil
	}
	return hits, more, err
}

// plainText is a console line without escape sequences and control bytes.
func plainText(l []byte) []byte {
	if bytes.IndexByte(l, 0x1b) < 0 {
		return l
	}
	var r renderer
	out := make([]byte, 0, len(l))
	for i := 0; i < len(l); {
		if l[i] == 0x1b {
			i = r.escape(l, i)
			continue
		}
		out = append(out, l[i])
		i++
	}
	return out
}

func (h *Handler) run(w http.ResponseWriter, r *http.Request, q *request) error {
	ctx := r.Context()
	run, err := h.b.Run(ctx, q.v, r.PathValue("id"))
	if err != nil {
		return err
	}
	if err := r.ParseForm(); err != nil {
		return statusError{http.StatusBadRequest, err.Error()}
	}
	cv, err := h.console(ctx, q.v, run, r.Form)
	if err != nil {
		return err
	}
	why, err := h.b.WaitReason(ctx, q.v, run)
	if err != nil {
		return err
	}
	data := map[string]any{"Run": run, "Console": cv, "Why": why, "Query": r.Form.Get("q")}
	// Cancel is offered when the viewer may change the run's job (a run of
	// a removed job: only to an admin).
	if ji, err := h.b.Job(ctx, q.v, run.Job); err == nil {
		data["CanCancel"] = q.v.MayChange(ji.Owner)
	} else {
		data["CanCancel"] = q.v.Admin()
	}
	if s := r.Form.Get("q"); s != "" {
		hits, more, err := h.searchConsole(ctx, q.v, run.ID, cv.Attempt, s)
		if err != nil {
			return err
		}
		data["Hits"], data["MoreHits"] = hits, more
	}
	if host, _, err := h.b.Attestation(ctx, q.v, run.ID); err == nil {
		data["SignedBy"] = host
	}
	if run.Group != "" {
		if g, err := h.b.Group(ctx, q.v, run.Group); err == nil {
			data["Group"] = g
		}
	}
	return h.render(w, r, q, http.StatusOK, "run", "Run "+run.ID+" of "+run.Job, data)
}

// followAnswer is one live-follow step: HTML for the lines after the ones
// the page has (the page drops its partial last line first).
type followAnswer struct {
	HTML       string `json:"html"`
	Offset     int64  `json:"offset"` // start of the partial last line (or the end)
	Have       int64  `json:"have"`   // bytes read, partial line included
	Line       int    `json:"line"`   // number of the line at Offset
	Style      string `json:"style"`  // SGR state at Offset
	State      string `json:"state"`
	Live       bool   `json:"live"` // keep following
	RunAttempt int    `json:"run_attempt"`
}

// follow long-polls the log API for bytes past have and answers the lines
// from offset (the page's partial last line) on, rendered.
func (h *Handler) follow(w http.ResponseWriter, r *http.Request, q *request) error {
	f := r.URL.Query()
	id := r.PathValue("id")
	num := func(k string) (int64, error) {
		n, err := strconv.ParseInt(f.Get(k), 10, 64)
		if err != nil || n < 0 {
			return 0, statusError{http.StatusBadRequest, fmt.Sprintf("%s %q: want a number", k, f.Get(k))}
		}
		return n, nil
	}
	attempt, err1 := num("attempt")
	offset, err2 := num("offset")
	have, err3 := num("have")
	line, err4 := num("line")
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		return err
	}
	if have < offset {
		have = offset
	}
	ctx := r.Context()
	c, err := h.b.ReadLog(ctx, q.v, id, int(attempt), have, 0, followWait)
	if err != nil {
		return err
	}
	live := c.Attempt == c.RunAttempt && !api.Terminal(c.State)
	ans := followAnswer{Offset: offset, Have: have, Line: int(line), Style: f.Get("style"), State: c.State, Live: live, RunAttempt: c.RunAttempt}
	if c.Size > offset {
		c, err = h.b.ReadLog(ctx, q.v, id, int(attempt), offset, 1<<20, 0)
		if err != nil {
			return err
		}
		data := c.Data
		ans.Have = offset + int64(len(data))
		live = c.Attempt == c.RunAttempt && !api.Terminal(c.State)
		ans.State, ans.Live = c.State, live
		whole := data
		if i := bytes.LastIndexByte(data, '\n'); i >= 0 {
			whole = data[:i+1]
		} else if len(data) < 1<<20 && (live || ans.Have < c.Size) {
			whole = nil // a line still being written
		}
		var out bytes.Buffer
		st := renderLines(&out, decodeStyle(ans.Style), ans.Line, whole, true)
		next := ans.Line + bytes.Count(whole, []byte{'\n'})
		if len(whole) > 0 && whole[len(whole)-1] != '\n' {
			next++ // an over-long line, cut
		}
		if tail := data[len(whole):]; len(tail) > 0 {
			renderLines(&out, st, next, tail, !live && ans.Have == c.Size)
		}
		ans.HTML, ans.Offset, ans.Line, ans.Style = out.String(), offset+int64(len(whole)), next, st.encode()
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	return json.NewEncoder(w).Encode(ans)
}

// rawLog streams one attempt's whole stored console as a download.
func (h *Handler) rawLog(w http.ResponseWriter, r *http.Request, q *request) error {
	ctx, id := r.Context(), r.PathValue("id")
	attempt := 0
	if a := r.URL.Query().Get("attempt"); a != "" {
		n, err := strconv.Atoi(a)
		if err != nil || n < 1 {
			return statusError{http.StatusBadRequest, fmt.Sprintf("attempt %q: want a number", a)}
		}
		attempt = n
	}
	c, err := h.b.ReadLog(ctx, q.v, id, attempt, 0, 1<<20, 0)
	if err != nil {
		return err
	}
	hd := w.Header()
	hd.Set("Content-Type", "text/plain; charset=utf-8")
	hd.Set("Content-Disposition", fmt.Sprintf(`attachment; filename="run-%s-attempt-%d.log"`, strings.Trim(id, `"\`), c.Attempt))
	for off := int64(0); ; {
		if _, err := w.Write(c.Data); err != nil { //nolint:gosec // G705: served as a text/plain attachment, never as HTML
			return nil // the client went away
		}
		off += int64(len(c.Data))
		if len(c.Data) == 0 || off >= c.Size {
			return nil
		}
		if c, err = h.b.ReadLog(ctx, q.v, id, c.Attempt, off, 1<<20, 0); err != nil {
			h.opt.Logger.Warn("raw console download cut short", "run", id, "err", err)
			return nil
		}
	}
}
