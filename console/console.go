package console

import (
	"bytes"
	"embed"
	"html/template"
	"io/fs"
	"net/http"
	"time"

	"github.com/rs/zerolog"

	"github.com/buildfleet/buildfleet/auth"
	"github.com/buildfleet/buildfleet/internal/clock"
	"github.com/buildfleet/buildfleet/scheduler"
	"github.com/buildfleet/buildfleet/storage"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Authenticator tells who holds a token; *auth.Authorizer is one.
type Authenticator interface {
	// Enabled reports whether tokens are required (token files are configured).
	Enabled() bool
	// Authenticate returns the identity holding token, and false for an unknown one.
	Authenticate(token string) (auth.Identity, bool)
}

// Options are what a Console shows and who may see it.
type Options struct {
	// Scheduler provides the fleet, queue, builds and executions.
	Scheduler *scheduler.Scheduler
	// CAS provides Actions, Commands, input trees, outputs, stdout and stderr.
	CAS storage.BlobStore
	// ActionCache provides results of actions the scheduler no longer remembers.
	ActionCache storage.ActionCache
	// Auth decides who may look; nil serves loopback callers only, as with no token files.
	Auth Authenticator
	// Clock is the time reference for "ago" and countdowns; nil is the system clock.
	Clock clock.Clock
	// ListenAddr is the console's configured listen address (host:port); with no token files a
	// Host header naming its host is accepted besides localhost, 127.0.0.0/8 and [::1].
	ListenAddr string
	// Logger receives refused logins and failed reads.
	Logger zerolog.Logger
}

// Console is the web console's HTTP handler. Mount it at /console/.
type Console struct {
	opts  Options
	mux   *http.ServeMux
	pages map[string]*template.Template
	// sessions are the logins of the form.
	sessions sessions
}

// New returns the console serving every page under /console/.
func New(opts Options) *Console {
	if opts.Clock == nil {
		opts.Clock = clock.System
	}
	c := &Console{opts: opts, mux: http.NewServeMux(), pages: parseTemplates()}
	static, _ := fs.Sub(staticFS, "static")
	c.mux.Handle("GET /console/static/", http.StripPrefix("/console/static/", http.FileServerFS(static)))
	c.mux.HandleFunc("GET /console/login", c.loginForm)
	c.mux.HandleFunc("POST /console/login", c.login)
	c.mux.HandleFunc("POST /console/logout", c.logout)
	c.mux.Handle("GET /console/{$}", http.RedirectHandler("/console/fleet", http.StatusFound))
	c.mux.Handle("GET /console/fleet", c.page(c.fleet))
	c.mux.Handle("GET /console/workers/{bot}", c.page(c.worker))
	c.mux.Handle("GET /console/queue", c.page(c.queue))
	c.mux.Handle("GET /console/builds", c.page(c.builds))
	c.mux.Handle("GET /console/builds/{id}", c.page(c.build))
	c.mux.Handle("GET /console/actions/{hash}/{size}", c.page(c.action))
	c.mux.Handle("GET /console/actions/{hash}/{size}/input/{path...}", c.page(c.input))
	c.mux.Handle("GET /console/blobs/{hash}/{size}", c.page(c.blob))
	return c
}

// ServeHTTP serves a console page.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Cache-Control", "no-store")
	if a := c.opts.Auth; (a == nil || !a.Enabled()) && !auth.IsLoopbackHost(r.Host, c.opts.ListenAddr) {
		// Without tokens the caller's address is the only check: a DNS-rebound name pointing at
		// 127.0.0.1 would pass it, so the name asked for must be a loopback one too.
		http.Error(w, "Misdirected request: with no token files the console answers only to a loopback Host (localhost, 127.0.0.1, [::1]) or the --metrics-listen address, not "+r.Host+".", http.StatusMisdirectedRequest)
		return
	}
	c.mux.ServeHTTP(w, r)
}

// view is what one page handler returns: a template and its data, or an error page.
type view struct {
	// template names the page template; title is the page's title.
	template string
	title    string
	// nav is the navigation entry to highlight ("fleet", "queue", "builds").
	nav string
	// live makes the page refresh itself.
	live bool
	data any
	// status is the HTTP status (0: 200); with message, an error page is shown.
	status  int
	message string
}

// pageData is what the layout template sees.
type pageData struct {
	Title  string
	Nav    string
	Live   bool
	Viewer *viewer
	Now    time.Time
	Data   any
	// Message is the text of an error page.
	Message string
}

// page wraps a handler of the console's pages: it authenticates the caller and renders the
// view. A request with the X-Console-Partial header gets only the page's main content (the
// live refresh of console.js).
func (c *Console) page(f func(r *http.Request, v *viewer) view) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v, ok := c.authenticate(w, r)
		if !ok {
			return
		}
		out := f(r, v)
		c.render(w, r, v, out)
	})
}

// errorView is an error page.
func errorView(status int, title, message string) view {
	return view{template: "error", title: title, status: status, message: message}
}

// render executes the view's template into the response.
func (c *Console) render(w http.ResponseWriter, r *http.Request, v *viewer, out view) {
	t := c.pages[out.template]
	if t == nil {
		http.Error(w, "unknown page "+out.template, http.StatusInternalServerError)
		return
	}
	pd := pageData{Title: out.title, Nav: out.nav, Live: out.live, Viewer: v, Now: c.opts.Clock.Now(), Data: out.data, Message: out.message}
	name := "layout"
	if r.Header.Get("X-Console-Partial") != "" {
		name = "content"
	}
	var buf bytes.Buffer
	if err := t.ExecuteTemplate(&buf, name, pd); err != nil {
		c.opts.Logger.Error().Err(err).Str("page", out.template).Msg("Rendering a console page failed")
		http.Error(w, "rendering failed: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if out.status != 0 {
		w.WriteHeader(out.status)
	}
	_, _ = w.Write(buf.Bytes())
}

// parseTemplates parses the layout with each page template.
func parseTemplates() map[string]*template.Template {
	base := template.Must(template.New("").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/parts.html"))
	pages := map[string]*template.Template{}
	names, _ := fs.Glob(templateFS, "templates/*.html")
	for _, n := range names {
		short := n[len("templates/") : len(n)-len(".html")]
		if short == "layout" || short == "parts" {
			continue
		}
		pages[short] = template.Must(template.Must(base.Clone()).ParseFS(templateFS, n))
	}
	return pages
}
