package console

import (
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/buildfleet/buildfleet/auth"
)

// cookieName is the cookie the login form sets; it holds the client token.
const cookieName = "buildfleet_console_token"

// viewer is who looks at a page.
type viewer struct {
	// open is set when authentication is off: the viewer may read everything.
	open bool
	// id is the authenticated client when authentication is on.
	id auth.Identity
	// viaCookie reports whether the token came from the login cookie (a logout button is shown).
	viaCookie bool
}

// CanRead reports whether the viewer may read instance's builds, actions and blobs.
func (v *viewer) CanRead(instance string) bool {
	return v.open || v.id.Allows(instance, auth.Read)
}

// Name is the masked id of the viewer's token ("" when authentication is off).
func (v *viewer) Name() string { return v.id.Name }

// LoggedIn reports whether the viewer logged in with the form (and may log out).
func (v *viewer) LoggedIn() bool { return v.viaCookie }

// mayReadSomething reports whether an identity has read permission on some instance name.
func mayReadSomething(id auth.Identity) bool {
	if id.Kind != auth.Client {
		return false
	}
	for _, g := range id.Grants {
		if g.Permissions.Has(auth.Read) {
			return true
		}
	}
	return false
}

// isLoopback reports whether a request's remote address is a loopback address.
func isLoopback(remoteAddr string) bool {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		host = remoteAddr
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// authenticate returns the viewer of r. Without token files only loopback callers are served
// (403 otherwise). With token files the token comes from the Authorization header or the login
// cookie; a page request without a valid one is sent to the login form, any other gets 401.
func (c *Console) authenticate(w http.ResponseWriter, r *http.Request) (*viewer, bool) {
	a := c.opts.Auth
	if a == nil || !a.Enabled() {
		if !isLoopback(r.RemoteAddr) {
			http.Error(w, "The console is served only to loopback callers when the scheduler has no token files (--client-tokens-file).", http.StatusForbidden)
			return nil, false
		}
		return &viewer{open: true}, true
	}
	token, viaCookie := "", false
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, rest, _ := strings.Cut(h, " ")
		if strings.EqualFold(scheme, "Bearer") {
			token = strings.TrimSpace(rest)
		}
	} else if ck, err := r.Cookie(cookieName); err == nil {
		token, viaCookie = ck.Value, true
	}
	if token != "" {
		if id, ok := a.Authenticate(token); ok && mayReadSomething(id) {
			return &viewer{id: id, viaCookie: viaCookie}, true
		}
	}
	if r.Header.Get("X-Console-Partial") != "" || r.Header.Get("Authorization") != "" {
		w.Header().Set("WWW-Authenticate", `Bearer realm="buildfleet console"`)
		http.Error(w, "A client token with read permission is required.", http.StatusUnauthorized)
		return nil, false
	}
	http.Redirect(w, r, "/console/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
	return nil, false
}

// loginData is what the login form shows.
type loginData struct {
	Next  string
	Error string
}

// safeNext returns next if it is a console path, else the fleet page.
func safeNext(next string) string {
	if strings.HasPrefix(next, "/console/") && !strings.HasPrefix(next, "//") && !strings.Contains(next, "\\") {
		return next
	}
	return "/console/fleet"
}

func (c *Console) loginForm(w http.ResponseWriter, r *http.Request) {
	if a := c.opts.Auth; a == nil || !a.Enabled() {
		http.Redirect(w, r, "/console/fleet", http.StatusFound)
		return
	}
	c.render(w, r, &viewer{}, view{template: "login", title: "Sign in", data: loginData{Next: safeNext(r.URL.Query().Get("next"))}})
}

// login checks the token of the form and sets the cookie.
func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	a := c.opts.Auth
	if a == nil || !a.Enabled() {
		http.Redirect(w, r, "/console/fleet", http.StatusSeeOther)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 4096)
	token := strings.TrimSpace(r.PostFormValue("token"))
	next := safeNext(r.PostFormValue("next"))
	id, ok := a.Authenticate(token)
	if !ok || !mayReadSomething(id) {
		msg := "Unknown token."
		if ok {
			msg = "This token has no read permission on any instance name."
		}
		c.opts.Logger.Warn().Str("remote", r.RemoteAddr).Str("token_id", id.Name).Msg("Console login refused")
		c.render(w, r, &viewer{}, view{template: "login", title: "Sign in", status: http.StatusUnauthorized,
			data: loginData{Next: next, Error: msg}})
		return
	}
	http.SetCookie(w, &http.Cookie{
		Name: cookieName, Value: token, Path: "/console/", HttpOnly: true, Secure: r.TLS != nil,
		SameSite: http.SameSiteStrictMode, MaxAge: 12 * 3600,
	})
	http.Redirect(w, r, next, http.StatusSeeOther)
}

// logout clears the cookie.
func (c *Console) logout(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: "", Path: "/console/", HttpOnly: true, MaxAge: -1, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, "/console/login", http.StatusSeeOther)
}
