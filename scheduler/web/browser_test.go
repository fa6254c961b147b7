package web_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/chromedp"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// startBrowser starts a headless Debian chromium with an empty profile
// and no network services of its own, and returns a tab's context. When
// the test fails, a screenshot of the tab is saved (its path is logged).
func startBrowser(t *testing.T) context.Context {
	t.Helper()
	bin := testsupport.NeedChromium(t)
	// Not t.TempDir: chromium's helper processes may still write to the
	// profile for a moment after the browser is gone, and TempDir's
	// cleanup fails the test on that.
	profile, err := os.MkdirTemp("", "kiln-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(bin),
		chromedp.UserDataDir(profile),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-default-browser-check", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.WindowSize(1200, 900),
	}
	// A bound on a hung browser, not an assertion on speed.
	base, cancelBase := context.WithTimeout(context.Background(), 3*time.Minute)
	alloc, cancelAlloc := chromedp.NewExecAllocator(base, opts...)
	ctx, cancelCtx := chromedp.NewContext(alloc)
	if err := chromedp.Run(ctx); err != nil {
		cancelCtx()
		cancelAlloc()
		cancelBase()
		os.RemoveAll(profile)
		t.Fatalf("start chromium: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			var png []byte
			sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			if err := chromedp.Run(sctx, chromedp.FullScreenshot(&png, 90)); err == nil {
				shots, _ := os.MkdirTemp("", "kiln-browser-test-")
				p := filepath.Join(shots, strings.ReplaceAll(t.Name(), "/", "_")+".png")
				if os.WriteFile(p, png, 0o644) == nil {
					t.Logf("screenshot of the failing page: %s", p)
				}
			}
			cancel()
		}
		chromedp.Cancel(ctx) // closes the browser and waits for it
		cancelCtx()
		cancelAlloc()
		cancelBase()
		for i := 0; i < 50; i++ {
			if os.RemoveAll(profile) == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	return ctx
}

func run(ctx context.Context, t *testing.T, actions ...chromedp.Action) {
	t.Helper()
	if err := chromedp.Run(ctx, actions...); err != nil {
		t.Fatal(err)
	}
}

// TestBrowserConsole: the run page follows a live run (lines appear while
// the fake worker writes them), renders colours, and shows a console that
// holds <script> and </pre> as text.
func TestBrowserConsole(t *testing.T) {
	e := newEnv(t, "[ui]", "public = true")
	ctx := startBrowser(t)
	if _, err := e.srv.Admin.ExecuteJobWith(context.Background(), "hello", api.ExecuteRequest{}); err != nil {
		t.Fatal(err)
	}
	w := e.worker()
	a := w.Lease()
	w.Log(a, []byte("line one\n"))
	run(ctx, t, chromedp.Navigate(e.srv.URL+"/runs/"+a.RunID), chromedp.WaitVisible("#L1", chromedp.ByID))
	var status string
	run(ctx, t, chromedp.Poll(`document.getElementById("console-status").textContent.includes("Following")`, nil),
		chromedp.Text("#console-status", &status, chromedp.ByID))

	// Lines written after the page loaded appear without a reload.
	w.Log(a, []byte("\x1b[32mline two\x1b[0m\n"))
	var text, colour string
	run(ctx, t, chromedp.WaitVisible("#L2", chromedp.ByID),
		chromedp.Text("#L2", &text, chromedp.ByID),
		chromedp.Evaluate(`getComputedStyle(document.querySelector("#L2 span.f2")).color`, &colour))
	if !strings.HasSuffix(text, "line two\n") {
		t.Errorf("line 2 reads %q", text)
	}
	if colour != "rgb(13, 188, 121)" {
		t.Errorf("green text is %q", colour)
	}

	hostile := `<script>window.pwned = 1</script></pre><b id="injected">bold</b><img src=x onerror="window.pwned=2">`
	w.Log(a, []byte(hostile+"\n"))
	var got string
	var pwned bool
	var injected, pres int
	run(ctx, t, chromedp.WaitVisible("#L3", chromedp.ByID),
		chromedp.Evaluate(`document.getElementById("L3").textContent`, &got),
		chromedp.Evaluate(`window.pwned !== undefined`, &pwned),
		chromedp.Evaluate(`document.querySelectorAll("#injected, #console img, #console script").length`, &injected),
		chromedp.Evaluate(`document.querySelectorAll("pre#console").length`, &pres))
	got = strings.TrimSuffix(got, "\n") // each line's own end
	if got != hostile || pwned || injected != 0 || pres != 1 {
		t.Errorf("hostile line: text %q, ran %v, elements %d, consoles %d", got, pwned, injected, pres)
	}

	w.Finish(a, api.ResultRequest{ExitCode: 0})
	run(ctx, t, chromedp.Poll(`document.getElementById("console-status").textContent.includes("ended (succeeded)")`, nil),
		chromedp.Text("#run-state", &status, chromedp.ByID))
	if status != "succeeded" {
		t.Errorf("state shown: %q", status)
	}

	// The same console loaded whole, without following, is text too.
	var again string
	run(ctx, t, chromedp.Navigate(e.srv.URL+"/runs/"+a.RunID+"#L3"), chromedp.WaitVisible("#L3", chromedp.ByID),
		chromedp.Evaluate(`document.getElementById("L3").textContent`, &again),
		chromedp.Evaluate(`window.pwned !== undefined`, &pwned))
	if strings.TrimSuffix(again, "\n") != hostile || pwned {
		t.Errorf("reloaded hostile line: %q, ran %v", again, pwned)
	}
}

// TestBrowserArtifactDownload: clicking an artifact's link downloads its
// bytes.
func TestBrowserArtifactDownload(t *testing.T) {
	e := newEnv(t, "[ui]", "public = true")
	content := "artifact \x00\x01\x02 <html>bytes</html>\n"
	id := e.runWith("built\n", 0, map[string]string{"pkg/out.bin": content})
	ctx := startBrowser(t)
	dl := t.TempDir()
	done := make(chan string, 1)
	listen := func(ev any) {
		if p, ok := ev.(*browser.EventDownloadProgress); ok && p.State == browser.DownloadProgressStateCompleted {
			select {
			case done <- p.GUID:
			default:
			}
		}
	}
	// Depending on the version, chromium reports downloads on the tab or
	// on the browser.
	chromedp.ListenTarget(ctx, listen)
	chromedp.ListenBrowser(ctx, listen)
	run(ctx, t,
		browser.SetDownloadBehavior(browser.SetDownloadBehaviorBehaviorAllowAndName).WithDownloadPath(dl).WithEventsEnabled(true),
		chromedp.Navigate(e.srv.URL+"/runs/"+id),
		chromedp.Click(`a[href$="/artifacts/pkg/out.bin"]`, chromedp.ByQuery))
	var guid string
	select {
	case guid = <-done:
	case <-ctx.Done():
		t.Fatal("the download did not complete")
	}
	b, err := os.ReadFile(filepath.Join(dl, guid))
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256([]byte(content))
	got := sha256.Sum256(b)
	if got != want {
		t.Errorf("downloaded %q (sha256 %s), want %q", b, hex.EncodeToString(got[:]), content)
	}
}

// TestBrowserAccess: a public server shows the run page at once; a
// private one sends the browser to the login, and back to the page after
// it, with a cookie that the page's script cannot read.
func TestBrowserAccess(t *testing.T) {
	for _, public := range []bool{true, false} {
		name := map[bool]string{true: "public", false: "private"}[public]
		t.Run(name, func(t *testing.T) {
			var e *env
			if public {
				e = newEnv(t, "[ui]", "public = true")
			} else {
				e = newEnv(t)
			}
			id := e.runWith("visible console\n", 0, nil)
			ctx := startBrowser(t)
			var loc, line string
			run(ctx, t, chromedp.Navigate(e.srv.URL+"/runs/"+id), chromedp.Location(&loc))
			if public {
				var login bool
				run(ctx, t, chromedp.Text("#L1", &line, chromedp.ByID),
					chromedp.Evaluate(`!!document.querySelector('a[href^="/login"]')`, &login))
				if !strings.HasSuffix(line, "visible console\n") || !login {
					t.Errorf("public run page: line %q, login link %v", line, login)
				}
				return
			}
			if !strings.Contains(loc, "/login?next=") {
				t.Fatalf("private run page went to %s, want the login", loc)
			}
			// A wrong token stays on the login page.
			var msg string
			run(ctx, t, chromedp.SendKeys("#token", "kiln_admin_wrong", chromedp.ByID), chromedp.Submit("#token", chromedp.ByID),
				chromedp.WaitVisible("p.error", chromedp.ByQuery), chromedp.Text("p.error", &msg, chromedp.ByQuery))
			if msg == "" {
				t.Error("no error for a wrong token")
			}
			var cookie string
			run(ctx, t, chromedp.Navigate(e.srv.URL+"/login?next=/runs/"+id),
				chromedp.SendKeys("#token", e.srv.AdminToken, chromedp.ByID), chromedp.Submit("#token", chromedp.ByID),
				chromedp.WaitVisible("#L1", chromedp.ByID), chromedp.Text("#L1", &line, chromedp.ByID),
				chromedp.Location(&loc), chromedp.Evaluate(`document.cookie`, &cookie))
			if !strings.HasSuffix(loc, "/runs/"+id) || !strings.HasSuffix(line, "visible console\n") {
				t.Errorf("after login: at %s, line %q", loc, line)
			}
			if cookie != "" {
				t.Errorf("the session cookie is readable by scripts: %q", cookie)
			}
		})
	}
}
