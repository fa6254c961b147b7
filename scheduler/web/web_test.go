package web_test

import (
	"context"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
)

type env struct {
	t   *testing.T
	srv *testsupport.InProcessServer
	w   *testsupport.FakeWorker
}

func newEnv(t *testing.T, extraConfig ...string) *env {
	t.Helper()
	srv := testsupport.StartInProcessServer(t, extraConfig...)
	ctx := context.Background()
	if _, err := srv.Admin.AddJob(ctx, &api.Job{Name: "hello", Image: "busybox", Script: "echo hi"}); err != nil {
		t.Fatal(err)
	}
	return &env{t: t, srv: srv}
}

func (e *env) worker() *testsupport.FakeWorker {
	if e.w == nil {
		e.w = testsupport.EnrollFakeWorker(e.t, e.srv.URL, e.srv.Admin, "w1", testsupport.DefaultFacts("busybox"))
	}
	return e.w
}

// runWith executes hello and lets the fake worker write console and
// finish it with exit code.
func (e *env) runWith(console string, exit int, artifacts map[string]string) string {
	e.t.Helper()
	if _, err := e.srv.Admin.ExecuteJobWith(context.Background(), "hello", api.ExecuteRequest{}); err != nil {
		e.t.Fatal(err)
	}
	w := e.worker()
	a := w.Lease()
	w.Log(a, []byte(console))
	res := api.ResultRequest{ExitCode: exit, Checks: []api.Check{{Name: "lintian", Stage: "post", ExitCode: 0}}}
	for p, c := range artifacts {
		res.Artifacts = append(res.Artifacts, w.Artifact(a, p, []byte(c)))
	}
	w.Finish(a, res)
	return a.RunID
}

// httpBrowser is an HTTP client with a cookie jar that does not follow
// redirects, so tests see them.
func httpBrowser(t *testing.T) *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func get(t *testing.T, c *http.Client, u string) (int, string, http.Header) {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

func post(t *testing.T, c *http.Client, u string, form url.Values, hdr ...string) (int, string, http.Header) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, u, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

func login(t *testing.T, c *http.Client, base, token string) {
	t.Helper()
	code, body, hdr := post(t, c, base+"/login", url.Values{"token": {token}, "next": {"/"}})
	if code != http.StatusSeeOther {
		t.Fatalf("login: %d %s", code, body)
	}
	sc := hdr.Get("Set-Cookie")
	for _, want := range []string{"HttpOnly", "SameSite=Strict"} {
		if !strings.Contains(sc, want) {
			t.Errorf("session cookie %q lacks %s", sc, want)
		}
	}
	if strings.Contains(sc, "Secure") {
		t.Errorf("session cookie %q is Secure over plain HTTP", sc)
	}
}

var csrfRe = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func csrfOf(t *testing.T, page string) string {
	t.Helper()
	m := csrfRe.FindStringSubmatch(page)
	if m == nil {
		t.Fatal("no CSRF token in the page")
	}
	return m[1]
}

func TestAccess(t *testing.T) {
	t.Run("private", func(t *testing.T) {
		e := newEnv(t)
		id := e.runWith("ok\n", 0, nil)
		c := httpBrowser(t)
		code, _, hdr := get(t, c, e.srv.URL+"/runs/"+id)
		if code != http.StatusSeeOther || !strings.HasPrefix(hdr.Get("Location"), "/login?next=") {
			t.Fatalf("anonymous run page: %d %v, want a redirect to the login", code, hdr.Get("Location"))
		}
		if code, _, _ := get(t, c, e.srv.URL+"/jobs/hello/failed.atom"); code != http.StatusUnauthorized {
			t.Errorf("anonymous feed: %d, want 401", code)
		}
		for _, bad := range []string{"", "kiln_admin_nope"} {
			if code, body, _ := post(t, c, e.srv.URL+"/login", url.Values{"token": {bad}}); code != http.StatusUnauthorized || !strings.Contains(body, `class="error"`) {
				t.Errorf("login with %q: %d", bad, code)
			}
		}
		// A worker token is not a login.
		tok, _ := e.srv.Admin.CreateEnrollmentToken(context.Background(), api.EnrollmentTokenRequest{})
		wr, err := api.NewClient(e.srv.URL, tok.Token).Enroll(context.Background(), api.EnrollRequest{Name: "w9", Facts: testsupport.DefaultFacts()})
		if err != nil {
			t.Fatal(err)
		}
		if code, _, _ := post(t, c, e.srv.URL+"/login", url.Values{"token": {wr.Token}}); code != http.StatusUnauthorized {
			t.Errorf("login with a worker token: %d, want 401", code)
		}
		ct, err := e.srv.Admin.CreateClientToken(context.Background(), api.ClientTokenRequest{Name: "alice"})
		if err != nil {
			t.Fatal(err)
		}
		login(t, c, e.srv.URL, ct.Token)
		// Job ownership: alice does not see the admin's job and runs.
		if code, _, _ := get(t, c, e.srv.URL+"/runs/"+id); code != http.StatusNotFound {
			t.Errorf("another owner's run page: %d, want 404", code)
		}
		if _, front, _ := get(t, c, e.srv.URL+"/"); !strings.Contains(front, "No runs.") {
			t.Error("the front page lists another owner's runs")
		}
		alice := api.NewClient(e.srv.URL, ct.Token)
		if _, err := alice.AddJob(context.Background(), &api.Job{Name: "mine", Image: "busybox", Script: "true"}); err != nil {
			t.Fatal(err)
		}
		mine, err := alice.ExecuteJobWith(context.Background(), "mine", api.ExecuteRequest{})
		if err != nil {
			t.Fatal(err)
		}
		code, body, _ := get(t, c, e.srv.URL+"/runs/"+mine.ID)
		if code != http.StatusOK || !strings.Contains(body, "alice") {
			t.Fatalf("own run page after login: %d", code)
		}
		if code, _, _ := post(t, c, e.srv.URL+"/runs/"+id+"/cancel", url.Values{"csrf": {csrfOf(t, body)}}); code != http.StatusNotFound {
			t.Errorf("cancel of another owner's run: %d, want 404", code)
		}
		id = mine.ID
		if code, _, _ := get(t, c, e.srv.URL+"/hosts"); code != http.StatusForbidden {
			t.Errorf("hosts page for a client token: %d, want 403", code)
		}
		// Revoked: the cookie no longer opens pages.
		if err := e.srv.Admin.RevokeClientToken(context.Background(), "alice"); err != nil {
			t.Fatal(err)
		}
		if code, _, _ := get(t, c, e.srv.URL+"/runs/"+id); code != http.StatusSeeOther {
			t.Errorf("run page with a revoked token's cookie: %d, want a redirect to the login", code)
		}
		// A login never redirects off the site.
		code, _, hdr = post(t, httpBrowser(t), e.srv.URL+"/login", url.Values{"token": {e.srv.AdminToken}, "next": {"//evil.example/"}})
		if code != http.StatusSeeOther || hdr.Get("Location") != "/" {
			t.Errorf("login with next=//evil.example/: %d %q", code, hdr.Get("Location"))
		}
	})
	t.Run("public", func(t *testing.T) {
		e := newEnv(t, "[ui]", "public = true")
		id := e.runWith("ok\n", 0, nil)
		c := httpBrowser(t)
		code, body, _ := get(t, c, e.srv.URL+"/runs/"+id)
		if code != http.StatusOK || !strings.Contains(body, "Log in") {
			t.Fatalf("public run page: %d", code)
		}
		if strings.Contains(body, `name="csrf"`) || strings.Contains(body, "Cancel run") || strings.Contains(body, "Execute now") {
			t.Error("the anonymous reader is offered a write")
		}
		if code, _, _ := get(t, c, e.srv.URL+"/hosts"); code != http.StatusForbidden {
			t.Errorf("public hosts page: %d, want 403", code)
		}
		if code, _, _ := post(t, c, e.srv.URL+"/jobs/hello/execute", url.Values{}); code != http.StatusUnauthorized {
			t.Errorf("anonymous execute: %d, want 401", code)
		}
		runs, _ := e.srv.Admin.ListRuns(context.Background(), "hello", 10)
		if len(runs) != 1 {
			t.Errorf("an anonymous write queued a run: %d runs", len(runs))
		}
		// Logged in, a client reads every owner's jobs on a public server
		// but is offered only the writes it may make.
		ct, err := e.srv.Admin.CreateClientToken(context.Background(), api.ClientTokenRequest{Name: "dave"})
		if err != nil {
			t.Fatal(err)
		}
		login(t, c, e.srv.URL, ct.Token)
		code, body, _ = get(t, c, e.srv.URL+"/jobs/hello")
		if code != http.StatusOK || strings.Contains(body, "Execute now") {
			t.Errorf("another owner's job page on a public server: %d, offers execute %v", code, strings.Contains(body, "Execute now"))
		}
	})
}

func TestWritesNeedCSRF(t *testing.T) {
	e := newEnv(t)
	if _, err := e.srv.Admin.ExecuteJobWith(context.Background(), "hello", api.ExecuteRequest{}); err != nil {
		t.Fatal(err)
	}
	c := httpBrowser(t)
	login(t, c, e.srv.URL, e.srv.AdminToken)
	_, page, _ := get(t, c, e.srv.URL+"/runs/1")
	tok := csrfOf(t, page)
	for _, tc := range []struct {
		name string
		form url.Values
		hdr  []string
	}{
		{"no token", url.Values{}, nil},
		{"wrong token", url.Values{"csrf": {"x" + tok}}, nil},
		{"other origin", url.Values{"csrf": {tok}}, []string{"Origin", "http://evil.example"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if code, _, _ := post(t, c, e.srv.URL+"/runs/1/cancel", tc.form, tc.hdr...); code != http.StatusForbidden {
				t.Errorf("cancel: %d, want 403", code)
			}
			if r, _ := e.srv.Admin.GetRun(context.Background(), "1"); r.State != api.StateQueued {
				t.Fatalf("run is %s after a refused cancel", r.State)
			}
		})
	}
	if code, _, hdr := post(t, c, e.srv.URL+"/runs/1/cancel", url.Values{"csrf": {tok}}, "Origin", e.srv.URL); code != http.StatusSeeOther || hdr.Get("Location") != "/runs/1" {
		t.Fatalf("cancel with the token: %d", code)
	}
	if r, _ := e.srv.Admin.GetRun(context.Background(), "1"); r.State != api.StateCancelled {
		t.Fatalf("run is %s after cancel", r.State)
	}
	code, _, hdr := post(t, c, e.srv.URL+"/jobs/hello/execute", url.Values{"csrf": {tok}})
	if code != http.StatusSeeOther || hdr.Get("Location") != "/runs/2" {
		t.Fatalf("execute: %d %s", code, hdr.Get("Location"))
	}
	e.worker()
	if code, hosts, _ := get(t, c, e.srv.URL+"/hosts"); code != 200 || !strings.Contains(hosts, "<h2>w1 </h2>") || !strings.Contains(hosts, "<dt>Isolations</dt>") || !strings.Contains(hosts, "busybox: 1") {
		t.Errorf("hosts page: %d", code)
	}
	if code, _, _ := post(t, c, e.srv.URL+"/hosts/w1/drain", url.Values{"csrf": {tok}}); code != http.StatusSeeOther {
		t.Fatalf("drain: %d", code)
	}
	hs, _ := e.srv.Admin.ListHosts(context.Background())
	if len(hs) != 1 || !hs[0].Drained {
		t.Fatalf("host not drained: %+v", hs)
	}
	// Logged in with another token, the first session's CSRF token is refused.
	ct, _ := e.srv.Admin.CreateClientToken(context.Background(), api.ClientTokenRequest{Name: "bob"})
	c2 := httpBrowser(t)
	login(t, c2, e.srv.URL, ct.Token)
	if code, _, _ := post(t, c2, e.srv.URL+"/jobs/hello/execute", url.Values{"csrf": {tok}}); code != http.StatusForbidden {
		t.Errorf("another session's CSRF token: %d, want 403", code)
	}
}

func TestConsoleIsText(t *testing.T) {
	e := newEnv(t, "[ui]", "public = true")
	console := "plain line\n" +
		"\x1b[31mred\x1b[0m and \x1b[1;32mbold green\x1b[0m\n" +
		"<script>alert(1)</script>\n" +
		"</pre><img src=x onerror=alert(2)>\n" +
		"\x1b]0;title\x07osc gone & \"quoted\"\n" +
		"progress 10%\rprogress 100%\n" +
		"bad utf8 \xff end\n"
	id := e.runWith(console, 1, nil)
	_, body, hdr := get(t, httpBrowser(t), e.srv.URL+"/runs/"+id)
	if csp := hdr.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") {
		t.Errorf("CSP %q", csp)
	}
	for _, bad := range []string{"<script>alert", "<img src=x", "</pre><img", "\x1b", "progress 10%", "0;title"} {
		if strings.Contains(body, bad) {
			t.Errorf("page holds %q", bad)
		}
	}
	for _, want := range []string{
		`<span class="f1">red</span>`,
		`<span class="f2 B">bold green</span>`,
		`&lt;script&gt;alert(1)&lt;/script&gt;`,
		`&lt;/pre&gt;&lt;img src=x onerror=alert(2)&gt;`,
		`osc gone &amp; &#34;quoted&#34;`,
		`progress 100%`,
		"bad utf8 \uFFFD end",
		`id="L1"`, `id="L7"`, `href="#L3"`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	// The raw download is the bytes as written, never a page.
	code, raw, hdr := get(t, httpBrowser(t), e.srv.URL+"/runs/"+id+"/log.txt")
	if code != 200 || raw != console || !strings.HasPrefix(hdr.Get("Content-Disposition"), "attachment") || hdr.Get("Content-Type") != "text/plain; charset=utf-8" {
		t.Errorf("raw console: %d %q %v", code, raw, hdr)
	}
}

func TestLargeConsolePages(t *testing.T) {
	e := newEnv(t, "[ui]", "public = true")
	var b strings.Builder
	const lines = 120000 // ~3.2 MiB: many windows, several line-index checkpoints
	for i := 1; i <= lines; i++ {
		fmt.Fprintf(&b, "line %06d of the console\n", i)
	}
	id := e.runWith(b.String(), 0, nil)
	c := httpBrowser(t)
	_, body, _ := get(t, c, e.srv.URL+"/runs/"+id)
	last := fmt.Sprintf(`id="L%d"><a class="n" href="#L%d" data-n="%d"></a>line %06d`, lines, lines, lines, lines)
	if !strings.Contains(body, last) {
		t.Fatal("the tail window lacks the last line with its number")
	}
	if strings.Contains(body, `id="L1"`) {
		t.Fatal("the tail window of a large console starts at line 1")
	}
	m := regexp.MustCompile(`href="(/runs/\d+\?attempt=1&amp;before=\d+)#console-head">Earlier`).FindStringSubmatch(body)
	if m == nil {
		t.Fatal("no link to earlier output")
	}
	_, earlier, _ := get(t, c, e.srv.URL+strings.ReplaceAll(m[1], "&amp;", "&"))
	// Every line number in a window is that line's own.
	for _, l := range regexp.MustCompile(`id="L(\d+)"><a class="n" href="#L\d+" data-n="\d+"></a>line (\d+)`).FindAllStringSubmatch(earlier, -1) {
		if fmt.Sprintf("%06s", l[1]) != l[2] {
			t.Fatalf("line anchor L%s shows line %s", l[1], l[2])
		}
	}
	_, at, _ := get(t, c, e.srv.URL+"/runs/"+id+"?line=123")
	if !strings.Contains(at, `id="L123"><a class="n" href="#L123" data-n="123"></a>line 000123`) {
		t.Fatal("?line=123 does not show line 123")
	}
	_, deep, _ := get(t, c, e.srv.URL+"/runs/"+id+"?line=100000")
	if !strings.Contains(deep, `id="L100000"><a class="n" href="#L100000" data-n="100000"></a>line 100000`) {
		t.Fatal("?line=100000 does not show line 100000")
	}
	_, found, _ := get(t, c, e.srv.URL+"/runs/"+id+"?q=LINE+012345")
	if !strings.Contains(found, "line=12345#L12345") || !strings.Contains(found, "1 matching lines") {
		t.Fatal("search does not find line 12345")
	}
}

func TestFollow(t *testing.T) {
	e := newEnv(t)
	if _, err := e.srv.Admin.ExecuteJobWith(context.Background(), "hello", api.ExecuteRequest{}); err != nil {
		t.Fatal(err)
	}
	w := e.worker()
	a := w.Lease()
	w.Log(a, []byte("first\n\x1b[31mred con"))
	c := httpBrowser(t)
	login(t, c, e.srv.URL, e.srv.AdminToken)
	_, page, _ := get(t, c, e.srv.URL+"/runs/"+a.RunID)
	attr := func(name string) string {
		m := regexp.MustCompile(name + `="([^"]*)"`).FindStringSubmatch(page)
		if m == nil {
			t.Fatalf("console lacks %s", name)
		}
		return m[1]
	}
	if attr("data-live") != "true" || attr("data-offset") != "6" || attr("data-line") != "2" {
		t.Fatalf("live console attributes: offset %s line %s", attr("data-offset"), attr("data-line"))
	}
	if !strings.Contains(page, `class="l partial" id="L2"`) {
		t.Fatal("the partial last line is not marked")
	}
	type answer struct {
		HTML, Style, State string
		Offset, Have       int64
		Line               int
		Live               bool
	}
	step := func(q string) answer {
		t.Helper()
		code, body, _ := get(t, c, e.srv.URL+"/runs/"+a.RunID+"/follow?"+q)
		if code != 200 {
			t.Fatalf("follow: %d %s", code, body)
		}
		var ans answer
		if err := json.Unmarshal([]byte(body), &ans); err != nil {
			t.Fatal(err)
		}
		return ans
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.Log(a, []byte("tinued\nthird <b>\n"))
	}()
	ans := step(fmt.Sprintf("attempt=1&offset=%s&have=%s&line=%s&style=%s", attr("data-offset"), attr("data-have"), attr("data-line"), url.QueryEscape(attr("data-style"))))
	<-done
	for ans.Have < int64(len("first\n\x1b[31mred continued\nthird <b>\n")) {
		ans = step(fmt.Sprintf("attempt=1&offset=%d&have=%d&line=%d&style=%s", ans.Offset, ans.Have, ans.Line, url.QueryEscape(ans.Style)))
	}
	if !strings.Contains(ans.HTML, `id="L2"`) || !strings.Contains(ans.HTML, `<span class="f1">red continued</span>`) {
		// The last answer may hold only line 3 when line 2 came in an
		// earlier one; the test asks from line 2 again to check both.
		ans = step("attempt=1&offset=6&have=6&line=2&style=" + url.QueryEscape(attr("data-style")))
	}
	for _, want := range []string{`id="L2"`, `<span class="f1">red continued</span>`, `id="L3"`, `third &lt;b&gt;`} {
		if !strings.Contains(ans.HTML, want) {
			t.Errorf("follow answer lacks %q: %s", want, ans.HTML)
		}
	}
	if !ans.Live || ans.Line != 4 {
		t.Errorf("follow answer: live %v line %d", ans.Live, ans.Line)
	}
	w.Finish(a, api.ResultRequest{ExitCode: 0})
	if fin := step(fmt.Sprintf("attempt=1&offset=%d&have=%d&line=%d", ans.Offset, ans.Have, ans.Line)); fin.Live || fin.State != api.StateSucceeded {
		t.Errorf("follow after the end: live %v state %s", fin.Live, fin.State)
	}
}

func TestPages(t *testing.T) {
	e := newEnv(t, "[ui]", "public = true")
	ok := e.runWith("fine\n", 0, map[string]string{"dir/out.bin": "artifact bytes\x00\x01", "x.txt": "<html>not a page</html>"})
	bad := e.runWith("broke\n", 2, nil)
	c := httpBrowser(t)
	ctx := context.Background()
	run, _ := e.srv.Admin.GetRun(ctx, ok)
	sha := run.Artifacts[0].SHA256

	t.Run("artifact", func(t *testing.T) {
		code, body, hdr := get(t, c, e.srv.URL+"/runs/"+ok+"/artifacts/dir/out.bin")
		if code != 200 || body != "artifact bytes\x00\x01" || hdr.Get("Content-Type") != "application/octet-stream" ||
			hdr.Get("Content-Disposition") != `attachment; filename=out.bin` {
			t.Errorf("artifact: %d %q %v", code, body, hdr)
		}
		if code, _, _ := get(t, c, e.srv.URL+"/runs/"+ok+"/artifacts/nope"); code != 404 {
			t.Errorf("missing artifact: %d", code)
		}
	})
	for _, tc := range []struct {
		path  string
		code  int
		wants []string
	}{
		{"/", 200, []string{`href="/runs/` + ok + `"`, `href="/runs/` + bad + `"`, "succeeded", "failed", "w1"}},
		{"/?state=failed", 200, []string{`href="/runs/` + bad + `"`}},
		{"/?state=bogus", 400, nil},
		{"/?host=w1&job=hello", 200, []string{`href="/runs/` + ok + `"`}},
		{"/?host=other", 200, []string{"No runs."}},
		{"/jobs", 200, []string{`href="/jobs/hello"`}},
		{"/jobs/hello", 200, []string{"50%", "1 of 2 ended runs", "Revision 1", "failed.atom"}},
		{"/jobs/nope", 404, nil},
		{"/runs/" + ok, 200, []string{"dir/out.bin", sha, "lintian", "16 B"}},
		{"/runs/999", 404, nil},
		{"/runs/abc", 404, nil},
		{"/runs/" + ok + "?attempt=7", 400, nil},
		{"/compare/" + ok + "/" + bad, 200, []string{"only-a", "dir/out.bin", "differ"}},
		{"/search?sha256=" + sha, 200, []string{`href="/runs/` + ok + `"`, "dir/out.bin"}},
		{"/search?sha256=zz", 400, nil},
		{"/groups/77", 404, nil},
		{"/nowhere", 404, nil},
		{"/static/style.css", 200, []string{".f196{color:#ff0000}"}},
		{"/static/console.js", 200, []string{"follow"}},
	} {
		t.Run(tc.path, func(t *testing.T) {
			code, body, _ := get(t, c, e.srv.URL+tc.path)
			if code != tc.code {
				t.Fatalf("%s: %d, want %d", tc.path, code, tc.code)
			}
			if tc.code != 200 && !strings.Contains(body, "<main>") {
				t.Errorf("%s: error is not a page", tc.path)
			}
			for _, w := range tc.wants {
				if !strings.Contains(body, w) {
					t.Errorf("%s lacks %q", tc.path, w)
				}
			}
		})
	}
	t.Run("feed", func(t *testing.T) {
		code, body, hdr := get(t, c, e.srv.URL+"/jobs/hello/failed.atom")
		if code != 200 || !strings.HasPrefix(hdr.Get("Content-Type"), "application/atom+xml") {
			t.Fatalf("feed: %d %v", code, hdr)
		}
		var feed struct {
			Entries []struct {
				ID   string `xml:"id"`
				Link struct {
					Href string `xml:"href,attr"`
				} `xml:"link"`
			} `xml:"entry"`
		}
		if err := xml.Unmarshal([]byte(body), &feed); err != nil {
			t.Fatal(err)
		}
		if len(feed.Entries) != 1 || !strings.HasSuffix(feed.Entries[0].Link.Href, "/runs/"+bad) {
			t.Fatalf("feed entries: %+v", feed.Entries)
		}
	})
}

func TestWaitReason(t *testing.T) {
	e := newEnv(t, "[ui]", "public = true")
	c := httpBrowser(t)
	if _, err := e.srv.Admin.ExecuteJobWith(context.Background(), "hello", api.ExecuteRequest{}); err != nil {
		t.Fatal(err)
	}
	why := func() string {
		_, body, _ := get(t, c, e.srv.URL+"/runs/1")
		m := regexp.MustCompile(`<dd class="why">([^<]*)</dd>`).FindStringSubmatch(body)
		if m == nil {
			return ""
		}
		return m[1]
	}
	if got := why(); got != "no host is enrolled" {
		t.Errorf("no hosts: %q", got)
	}
	testsupport.EnrollFakeWorker(t, e.srv.URL, e.srv.Admin, "other", testsupport.DefaultFacts("bookworm"))
	if got := why(); got != "no live host with that platform has image busybox" {
		t.Errorf("no host with the image: %q", got)
	}
	busy := testsupport.DefaultFacts("busybox")
	busy.FreeSlots = 0
	testsupport.EnrollFakeWorker(t, e.srv.URL, e.srv.Admin, "busy", busy)
	if got := why(); !strings.Contains(got, "busy") {
		t.Errorf("host busy: %q", got)
	}
}

func TestGroupPage(t *testing.T) {
	// One fake host takes both members once reproduce_wait is over.
	e := newEnv(t, `reproduce_wait = "1ms"`, "[ui]", "public = true")
	ctx := context.Background()
	r, err := e.srv.Admin.ExecuteJobWith(ctx, "hello", api.ExecuteRequest{Reproduce: 2})
	if err != nil {
		t.Fatal(err)
	}
	w := e.worker()
	for i := 0; i < 2; i++ {
		a := w.Lease()
		w.Log(a, []byte("member\n"))
		art := w.Artifact(a, "out.bin", []byte("content of "+a.RunID))
		w.Finish(a, api.ResultRequest{Artifacts: []api.Artifact{art}})
	}
	_, body, _ := get(t, httpBrowser(t), e.srv.URL+"/groups/"+r.Group)
	for _, want := range []string{"not reproducible", "Differing files", "<code>out.bin</code>", "w1"} {
		if !strings.Contains(body, want) {
			t.Errorf("group page lacks %q", want)
		}
	}
	_, runPage, _ := get(t, httpBrowser(t), e.srv.URL+"/runs/"+r.ID)
	if !strings.Contains(runPage, `href="/groups/`+r.Group+`"`) {
		t.Error("a member's run page does not link its group")
	}
}

// TestRateLimit: a token's pages count against its API rate limit.
func TestRateLimit(t *testing.T) {
	e := newEnv(t, "rate_limit = 0.001", "rate_burst = 2")
	ct, err := e.srv.Admin.CreateClientToken(context.Background(), api.ClientTokenRequest{Name: "carol"})
	if err != nil {
		t.Fatal(err)
	}
	c := httpBrowser(t)
	login(t, c, e.srv.URL, ct.Token)
	for i, want := range []int{200, 200, http.StatusTooManyRequests} {
		code, _, hdr := get(t, c, e.srv.URL+"/jobs")
		if code != want {
			t.Fatalf("request %d: %d, want %d", i+1, code, want)
		}
		if code == http.StatusTooManyRequests && hdr.Get("Retry-After") == "" {
			t.Error("429 without Retry-After")
		}
	}
}

// TestLoginRedirectStaysOnSite logs in with next values that a browser
// reads as another site once it has stripped tab, CR and LF and read "\"
// as "/"; each must land on a path of this site.
func TestLoginRedirectStaysOnSite(t *testing.T) {
	e := newEnv(t)
	base, err := url.Parse(e.srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, next, want string }{
		{"newline", "/\n/evil.example/", "/"},
		{"tab", "/\t/evil.example/", "/"},
		{"carriage return", "/\r/evil.example/", "/"},
		{"slash backslash", `/\evil.example`, "/"},
		{"two backslashes", `\\evil.example`, "/"},
		{"backslash slash", `\/evil.example`, "/"},
		{"double slash", "//evil.example/", "/"},
		{"scheme without slashes", "https:evil.example", "/"},
		{"scheme", "https://evil.example/", "/"},
		{"javascript", "javascript:alert(1)", "/"},
		{"leading space", " //evil.example/", "/"},
		{"leading controls", "\x01\x1f//evil.example/", "/"},
		{"control inside", "/runs/\x00x", "/"},
		{"very long", "/" + strings.Repeat("a", 10000), "/"},
		{"empty", "", "/"},
		{"relative", "runs/1", "/"},
		{"own path", "/runs/1", "/runs/1"},
		{"own path with query", "/search?sha256=ab", "/search?sha256=ab"},
		{"escaped slash stays a path", "/%2f/evil.example/", "/%2f/evil.example/"},
		{"trailing newline trimmed", "/jobs\n", "/jobs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, hdr := post(t, httpBrowser(t), e.srv.URL+"/login", url.Values{"token": {e.srv.AdminToken}, "next": {tc.next}})
			loc := hdr.Get("Location")
			if code != http.StatusSeeOther {
				t.Fatalf("login: %d", code)
			}
			if loc != tc.want {
				t.Errorf("Location %.200q, want %q", loc, tc.want)
			}
			if !sameSite(base, loc) {
				t.Errorf("Location %.200q leads a browser off the site", loc)
			}
		})
	}
	// The login page carries next into its form as the same safe path.
	_, body, _ := get(t, httpBrowser(t), e.srv.URL+"/login?next=/%0a/evil.example/")
	if !strings.Contains(body, `name="next" value="/"`) {
		t.Error("the login page keeps next=/%0a/evil.example/ in its form")
	}
}

// sameSite reports whether a browser at base that follows Location loc
// stays on base's host: it parses loc as browsers do (spaces and C0
// controls trimmed, tab/CR/LF removed, "\" read as "/").
func sameSite(base *url.URL, loc string) bool {
	loc = strings.TrimFunc(loc, func(r rune) bool { return r <= ' ' })
	loc = strings.NewReplacer("\t", "", "\r", "", "\n", "", `\`, "/").Replace(loc)
	if !strings.HasPrefix(loc, "/") || strings.HasPrefix(loc, "//") {
		return false
	}
	u, err := url.Parse(loc)
	if err != nil {
		return false
	}
	r := base.ResolveReference(u)
	return r.Scheme == base.Scheme && r.Host == base.Host
}

// TestFreedJobNameHidesOldIncarnation: token A adds a job with a secret
// in its env, runs it (alone and as a reproduce group), modifies and
// removes it; token B then adds a job of the same name. Neither through
// the API nor in the web view does B see A's revisions (script, env,
// diffs), runs or group; an admin listing the job by name sees only B's
// incarnation too; A still reads its own old run by its ID.
func TestFreedJobNameHidesOldIncarnation(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	token := func(name string) (*api.Client, string) {
		ct, err := e.srv.Admin.CreateClientToken(ctx, api.ClientTokenRequest{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		return api.NewClient(e.srv.URL, ct.Token), ct.Token
	}
	ca, _ := token("alice")
	cb, tokB := token("bob")
	w := e.worker()
	runOnce := func(c *api.Client, req api.ExecuteRequest) *api.Run {
		t.Helper()
		r, err := c.ExecuteJobWith(ctx, "shared", req)
		if err != nil {
			t.Fatal(err)
		}
		a := w.Lease()
		w.Finish(a, api.ResultRequest{ExitCode: 1})
		return r
	}

	if _, err := ca.AddJob(ctx, &api.Job{Name: "shared", Image: "busybox", Script: "echo alpha-script", Env: map[string]string{"TOKEN": "alpha-secret-1"}}); err != nil {
		t.Fatal(err)
	}
	aRun := runOnce(ca, api.ExecuteRequest{})
	aGroupRun := runOnce(ca, api.ExecuteRequest{Reproduce: 2})
	if aGroupRun.Group == "" {
		t.Fatal("a reproduce execute made no group")
	}
	if _, err := ca.ModifyJob(ctx, "shared", &api.Job{Name: "shared", Image: "busybox", Script: "echo alpha-script", Env: map[string]string{"TOKEN": "alpha-secret-2"}}); err != nil {
		t.Fatal(err)
	}
	if err := ca.RemoveJob(ctx, "shared"); err != nil {
		t.Fatal(err)
	}
	if _, err := cb.AddJob(ctx, &api.Job{Name: "shared", Image: "busybox", Script: "echo beta-script"}); err != nil {
		t.Fatal(err)
	}
	bRun := runOnce(cb, api.ExecuteRequest{})

	secrets := []string{"alpha-secret", "alpha-script"}
	t.Run("api", func(t *testing.T) {
		for who, c := range map[string]*api.Client{"bob": cb, "admin": e.srv.Admin} {
			runs, err := c.ListRuns(ctx, "shared", 100)
			if err != nil {
				t.Fatal(err)
			}
			if len(runs) != 1 || runs[0].ID != bRun.ID {
				t.Errorf("%s: runs of job shared: %+v, want only run %s", who, runs, bRun.ID)
			}
		}
		if _, err := cb.GetGroup(ctx, aGroupRun.Group); err == nil {
			t.Errorf("bob reads alice's group %s of the removed job", aGroupRun.Group)
		}
		if _, err := cb.GetRun(ctx, aRun.ID); err == nil {
			t.Errorf("bob reads alice's run %s of the removed job", aRun.ID)
		}
		if r, err := ca.GetRun(ctx, aRun.ID); err != nil || r.Job != "shared" {
			t.Errorf("alice's own old run %s: %+v, %v", aRun.ID, r, err)
		}
	})
	t.Run("web", func(t *testing.T) {
		c := httpBrowser(t)
		login(t, c, e.srv.URL, tokB)
		code, page, _ := get(t, c, e.srv.URL+"/jobs/shared")
		if code != http.StatusOK || !strings.Contains(page, "beta-script") {
			t.Fatalf("bob's job page: %d", code)
		}
		for _, s := range append(secrets, "Revision 1 ", "Revision 2 ", "/runs/"+aRun.ID+`"`, "/runs/"+aGroupRun.ID+`"`) {
			if strings.Contains(page, s) {
				t.Errorf("bob's job page shows %q of alice's removed job", s)
			}
		}
		req, _ := http.NewRequest(http.MethodGet, e.srv.URL+"/jobs/shared/failed.atom", nil)
		req.Header.Set("Authorization", "Bearer "+tokB)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		feed, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(feed), "/runs/"+bRun.ID+"<") {
			t.Fatalf("bob's feed: %d %s", resp.StatusCode, feed)
		}
		for _, id := range []string{aRun.ID, aGroupRun.ID} {
			if strings.Contains(string(feed), "/runs/"+id+"<") {
				t.Errorf("bob's feed lists alice's run %s", id)
			}
		}
		for _, p := range []string{"/runs/" + aRun.ID, "/groups/" + aGroupRun.Group, "/compare/" + aRun.ID + "/" + bRun.ID} {
			if code, _, _ := get(t, c, e.srv.URL+p); code != http.StatusNotFound {
				t.Errorf("%s for bob: %d, want 404", p, code)
			}
		}
		// The admin sees every owner's runs, but a job's page and its runs
		// listed by name are its current incarnation's.
		ac := httpBrowser(t)
		login(t, ac, e.srv.URL, e.srv.AdminToken)
		for _, p := range []string{"/jobs/shared", "/?job=shared"} {
			_, page, _ := get(t, ac, e.srv.URL+p)
			for _, s := range append(secrets, "Revision 1 ", "Revision 2 ", "/runs/"+aRun.ID+`"`, "/runs/"+aGroupRun.ID+`"`) {
				if strings.Contains(page, s) {
					t.Errorf("the admin's %s shows %q of alice's removed job", p, s)
				}
			}
		}
	})
}
