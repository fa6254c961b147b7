// Package web is the kiln server's web view: runs, jobs, consoles,
// artifacts, reproduce groups and hosts as HTML pages served at /, next to
// the API under /v1. Pages are rendered server-side with html/template
// from assets embedded in the binary; the one script (static/console.js)
// only follows a live console and filters it. Job output is rendered from
// ANSI colours to escaped text in classed spans and is never interpreted
// as HTML.
//
// Access: with Options.Public the read-only pages are served without a
// token; otherwise a login with a client or admin token sets an HttpOnly,
// SameSite=Strict cookie (Secure over TLS). Writes (cancel, execute,
// drain) need a token and carry a per-session CSRF token in their forms.
package web

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

//go:embed templates/*.html static/*
var assets embed.FS

// Options configure the web view.
type Options struct {
	// Public serves the read-only pages without a token.
	Public bool
	// TLS marks the session cookie Secure (the server speaks HTTPS).
	TLS    bool
	Logger *slog.Logger
	Now    func() time.Time
}

// Handler serves the web view.
type Handler struct {
	b       Backend
	opt     Options
	mux     *http.ServeMux
	pages   map[string]*template.Template
	csrfKey []byte
	css     []byte
	index   lineIndex
}

const (
	cookieName = "kiln_session"
	csrfField  = "csrf"
)

// New builds the web view over b.
func New(b Backend, opt Options) *Handler {
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	h := &Handler{b: b, opt: opt, mux: http.NewServeMux(), pages: map[string]*template.Template{}, csrfKey: make([]byte, 32)}
	rand.Read(h.csrfKey)
	css, err := assets.ReadFile("static/style.css")
	if err != nil {
		panic(err) // embedded: present by construction
	}
	h.css = append(css, paletteCSS()...)
	names, err := fs.Glob(assets, "templates/*.html")
	if err != nil {
		panic(err)
	}
	for _, n := range names {
		if n == "templates/layout.html" || n == "templates/runtable.html" {
			continue
		}
		t := template.Must(template.New("layout.html").Funcs(funcs).ParseFS(assets, "templates/layout.html", "templates/runtable.html", n))
		h.pages[strings.TrimSuffix(strings.TrimPrefix(n, "templates/"), ".html")] = t
	}
	h.routes()
	return h
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	// No inline script or style anywhere: a console line that slipped
	// through as markup could still not run.
	hd.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "same-origin")
	hd.Set("X-Frame-Options", "DENY")
	h.mux.ServeHTTP(w, r)
}

// request is one page request: who asks, and the CSRF token of their
// session.
type request struct {
	v    Viewer
	csrf string
}

type pageFunc func(w http.ResponseWriter, r *http.Request, q *request) error

func (h *Handler) routes() {
	get := func(pattern string, fn pageFunc) { h.mux.Handle("GET "+pattern, h.page(fn, false)) }
	post := func(pattern string, fn pageFunc) { h.mux.Handle("POST "+pattern, h.page(fn, true)) }
	get("/{$}", h.front)
	get("/jobs", h.jobs)
	get("/jobs/{name}", h.job)
	get("/jobs/{name}/failed.atom", h.feed)
	post("/jobs/{name}/execute", h.execute)
	get("/runs/{id}", h.run)
	get("/runs/{id}/log.txt", h.rawLog)
	get("/runs/{id}/follow", h.follow)
	get("/runs/{id}/artifacts/{path...}", h.artifact)
	get("/runs/{id}/attestation", h.attestation)
	post("/runs/{id}/cancel", h.cancel)
	get("/groups/{id}", h.group)
	get("/compare/{a}/{b}", h.compare)
	get("/search", h.search)
	get("/hosts", h.hosts)
	get("/images", h.images) // images.go
	get("/images/{name}/{version}", h.image)
	post("/hosts/{name}/drain", h.drain)
	post("/logout", h.logout)
	h.mux.HandleFunc("GET /login", h.loginPage)
	h.mux.HandleFunc("POST /login", h.login)
	h.mux.HandleFunc("GET /static/{file}", h.static)
	h.mux.Handle("/", h.page(func(w http.ResponseWriter, r *http.Request, q *request) error { return errNotFound }, false))
}

// viewer resolves the request's session cookie (or bearer token, for
// feed readers and scripts); nil when there is none or it is not valid.
func (h *Handler) viewer(r *http.Request) (Viewer, string) {
	tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if tok == "" {
		if c, err := r.Cookie(cookieName); err == nil {
			tok = c.Value
		}
	}
	if tok == "" {
		return nil, ""
	}
	v, err := h.b.Authenticate(r.Context(), tok)
	if err != nil {
		return nil, ""
	}
	return v, h.csrfToken(tok)
}

func (h *Handler) csrfToken(tok string) string {
	m := hmac.New(sha256.New, h.csrfKey)
	m.Write([]byte(tok))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func (h *Handler) page(fn pageFunc, write bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v, csrf := h.viewer(r)
		if v == nil {
			if _, err := r.Cookie(cookieName); err == nil {
				h.clearCookie(w, r) // revoked or expired: log in again
			}
			if !h.opt.Public || write {
				if r.Method == http.MethodGet && !strings.HasSuffix(r.URL.Path, ".atom") && !strings.HasSuffix(r.URL.Path, "/follow") {
					http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
					return
				}
				h.fail(w, r, &request{v: h.b.Anonymous()}, statusError{http.StatusUnauthorized, "log in with a client or admin token"})
				return
			}
			v = h.b.Anonymous()
		}
		q := &request{v: v, csrf: csrf}
		if d := h.b.Throttle(v); d > 0 {
			secs := int64(math.Ceil(d.Seconds()))
			w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
			h.fail(w, r, q, statusError{http.StatusTooManyRequests, fmt.Sprintf("too many requests with this token; retry in %ds", secs)})
			return
		}
		if write {
			if err := h.checkCSRF(r, q); err != nil {
				h.fail(w, r, q, err)
				return
			}
		}
		if err := fn(w, r, q); err != nil {
			h.fail(w, r, q, err)
		}
	})
}

// checkCSRF refuses a write whose form lacks the session's CSRF token or
// that comes from another origin. The SameSite=Strict cookie already keeps
// other sites' forms from carrying the session; this is the second lock.
func (h *Handler) checkCSRF(r *http.Request, q *request) error {
	if o := r.Header.Get("Origin"); o != "" && o != "null" {
		u, err := url.Parse(o)
		if err != nil || u.Host != r.Host {
			return errBadCSRF
		}
	}
	if q.v.Anonymous() || q.csrf == "" {
		return errForbidden
	}
	got := r.PostFormValue(csrfField)
	if subtle.ConstantTimeCompare([]byte(got), []byte(q.csrf)) != 1 {
		return errBadCSRF
	}
	return nil
}

func (h *Handler) fail(w http.ResponseWriter, r *http.Request, q *request, err error) {
	if errors.Is(err, context.Canceled) {
		return
	}
	status := httpStatus(err)
	msg := err.Error()
	if status >= 500 {
		h.opt.Logger.Error("web view", "path", r.URL.Path, "err", err)
		msg = "internal error (see the server's log)"
	}
	_ = h.render(w, r, q, status, "error", "Error", map[string]any{"Status": status, "Text": http.StatusText(status), "Msg": msg})
}

// view is what every page template gets.
type view struct {
	V      Viewer
	CSRF   string
	Public bool
	Title  string
	Now    time.Time
	Path   string
	D      any
}

func (h *Handler) render(w http.ResponseWriter, r *http.Request, q *request, status int, name, title string, data any) error {
	t, ok := h.pages[name]
	if !ok {
		return errors.New("no template " + name)
	}
	var buf bytes.Buffer
	err := t.ExecuteTemplate(&buf, "layout", view{V: q.v, CSRF: q.csrf, Public: h.opt.Public, Title: title, Now: h.opt.Now(), Path: r.URL.RequestURI(), D: data})
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, err = w.Write(buf.Bytes())
	return err
}

func (h *Handler) static(w http.ResponseWriter, r *http.Request) {
	var data []byte
	var ctype string
	switch r.PathValue("file") {
	case "style.css":
		data, ctype = h.css, "text/css; charset=utf-8"
	case "console.js":
		data, _ = assets.ReadFile("static/console.js")
		ctype = "text/javascript; charset=utf-8"
	default:
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", ctype)
	w.Header().Set("Cache-Control", "public, max-age=300")
	_, _ = w.Write(data)
}

func (h *Handler) setCookie(w http.ResponseWriter, r *http.Request, tok string) {
	//nolint:gosec // G124: Secure is set whenever the server speaks TLS; plain HTTP is loopback or --insecure-http
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: tok, Path: "/", HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: h.opt.TLS || r.TLS != nil})
}

func (h *Handler) clearCookie(w http.ResponseWriter, r *http.Request) {
	//nolint:gosec // G124: as setCookie
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: "", Path: "/", MaxAge: -1, HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: h.opt.TLS || r.TLS != nil})
}

// maxNext bounds a post-login redirect target; a longer one is dropped.
const maxNext = 2048

// safeNext keeps a post-login redirect on this site. It judges next as a
// browser will read the Location it becomes (the WHATWG URL parser):
// leading and trailing spaces and C0 controls trimmed, tab, CR and LF
// removed anywhere, and a backslash read as a slash. So "/\t/evil" or
// "/\\evil" is the host-relative "//evil", another site. The answer is that
// normalised form, and only when it is a path of this site ("/" otherwise),
// so what is checked is what the browser follows.
func safeNext(next string) string {
	if len(next) > maxNext {
		return "/"
	}
	next = strings.TrimFunc(next, func(r rune) bool { return r <= ' ' })
	next = strings.NewReplacer("\t", "", "\r", "", "\n", "", "\\", "/").Replace(next)
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") {
		return "/"
	}
	for _, r := range next {
		if r < ' ' || r == 0x7f {
			return "/"
		}
	}
	u, err := url.Parse(next)
	if err != nil || u.Scheme != "" || u.Host != "" || u.User != nil || u.Opaque != "" {
		return "/"
	}
	return next
}

func (h *Handler) loginPage(w http.ResponseWriter, r *http.Request) {
	q := &request{v: h.b.Anonymous()}
	if v, csrf := h.viewer(r); v != nil {
		q = &request{v: v, csrf: csrf}
	}
	_ = h.render(w, r, q, http.StatusOK, "login", "Log in", map[string]any{"Next": safeNext(r.URL.Query().Get("next"))})
}

func (h *Handler) login(w http.ResponseWriter, r *http.Request) {
	q := &request{v: h.b.Anonymous()}
	if o := r.Header.Get("Origin"); o != "" && o != "null" {
		if u, err := url.Parse(o); err != nil || u.Host != r.Host {
			h.fail(w, r, q, errBadCSRF)
			return
		}
	}
	tok := strings.TrimSpace(r.PostFormValue("token"))
	next := safeNext(r.PostFormValue("next"))
	if _, err := h.b.Authenticate(r.Context(), tok); tok == "" || err != nil {
		msg := "that token is not a valid client or admin token"
		if err != nil && tok != "" {
			msg = err.Error()
		}
		_ = h.render(w, r, q, http.StatusUnauthorized, "login", "Log in", map[string]any{"Next": next, "Error": msg})
		return
	}
	h.setCookie(w, r, tok)
	http.Redirect(w, r, next, http.StatusSeeOther) //nolint:gosec // G710: next passed safeNext (a path on this site)
}

func (h *Handler) logout(w http.ResponseWriter, r *http.Request, q *request) error {
	h.clearCookie(w, r)
	http.Redirect(w, r, "/", http.StatusSeeOther)
	return nil
}
