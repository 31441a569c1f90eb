package console

import (
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/buildfleet/buildfleet/auth"
)

// cookieName is the cookie the login form sets; it holds an opaque session id, never the token.
const cookieName = "buildfleet_console_session"

const (
	// sessionLifetime is how long a login lasts.
	sessionLifetime = 12 * time.Hour
	// maxSessions bounds the sessions kept in memory; beyond it the oldest login is dropped.
	maxSessions = 10000
)

// session is one login of the form: the token it was opened with and when it ends.
type session struct {
	token   string
	expires time.Time
}

// sessions maps random session ids (hex, 32 bytes of entropy) to logins, in memory only.
type sessions struct {
	mu sync.Mutex
	m  map[string]session
}

// open starts a session for token, expiring at now+sessionLifetime, and returns its id.
func (s *sessions) open(token string, now time.Time) string {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	id := hex.EncodeToString(b[:])
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string]session{}
	}
	if len(s.m) >= maxSessions {
		oldest := ""
		for k, v := range s.m {
			if !now.Before(v.expires) {
				delete(s.m, k)
			} else if oldest == "" || v.expires.Before(s.m[oldest].expires) {
				oldest = k
			}
		}
		if len(s.m) >= maxSessions {
			delete(s.m, oldest)
		}
	}
	s.m[id] = session{token: token, expires: now.Add(sessionLifetime)}
	return id
}

// token returns the token of session id, and false when it is unknown or expired at now.
func (s *sessions) token(id string, now time.Time) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.m[id]
	if !ok {
		return "", false
	}
	if !now.Before(v.expires) {
		delete(s.m, id)
		return "", false
	}
	return v.token, true
}

// close ends session id.
func (s *sessions) close(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, id)
}

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

// bearerToken returns the token of a Bearer Authorization header ("" for none or another scheme).
func bearerToken(r *http.Request) string {
	scheme, rest, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	if strings.EqualFold(scheme, "Bearer") {
		return strings.TrimSpace(rest)
	}
	return ""
}

// authenticate returns the viewer of r. Without token files only loopback callers are served
// (403 otherwise; ServeHTTP has already refused foreign Host headers). With token files the
// token comes from a Bearer Authorization header or else from the login session cookie (so a
// basic-auth proxy's header does not hide it); a page request without a valid one is sent to the
// login form, any other gets 401; a known token without read permission gets 403.
func (c *Console) authenticate(w http.ResponseWriter, r *http.Request) (*viewer, bool) {
	a := c.opts.Auth
	if a == nil || !a.Enabled() {
		if !isLoopback(r.RemoteAddr) {
			http.Error(w, "The console is served only to loopback callers when the scheduler has no token files (--client-tokens-file).", http.StatusForbidden)
			return nil, false
		}
		return &viewer{open: true}, true
	}
	token, viaCookie := bearerToken(r), false
	if token == "" {
		if ck, err := r.Cookie(cookieName); err == nil {
			if t, ok := c.sessions.token(ck.Value, c.opts.Clock.Now()); ok {
				token, viaCookie = t, true
				// A token revoked by a reload of the token files ends its sessions.
				if id, ok := a.Authenticate(t); !ok || !mayReadSomething(id) {
					c.sessions.close(ck.Value)
					token = ""
				}
			}
		}
	}
	if token != "" {
		id, ok := a.Authenticate(token)
		if ok && mayReadSomething(id) {
			return &viewer{id: id, viaCookie: viaCookie}, true
		}
		if ok {
			// A known token (an execute-only client token, a worker token) that may not read.
			http.Error(w, "This token has no read permission on any instance name.", http.StatusForbidden)
			return nil, false
		}
	}
	if r.Header.Get("X-Console-Partial") != "" || bearerToken(r) != "" {
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
	if !c.sameOrigin(w, r) {
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
		Name: cookieName, Value: c.sessions.open(token, c.opts.Clock.Now()), Path: "/console/", HttpOnly: true, Secure: r.TLS != nil,
		SameSite: http.SameSiteStrictMode, MaxAge: 12 * 3600,
	})
	http.Redirect(w, r, next, http.StatusSeeOther)
}

// sameOrigin refuses (403) a form POST sent by another site: an Origin header that is not this
// server's origin, or Sec-Fetch-Site: cross-site. It reports whether the request may go on.
func (c *Console) sameOrigin(w http.ResponseWriter, r *http.Request) bool {
	if strings.EqualFold(r.Header.Get("Sec-Fetch-Site"), "cross-site") {
		http.Error(w, "Cross-site form posts to the console are refused (Sec-Fetch-Site: cross-site).", http.StatusForbidden)
		return false
	}
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		if err != nil || !strings.EqualFold(u.Host, r.Host) || (u.Scheme != "http" && u.Scheme != "https") {
			http.Error(w, "Cross-origin form posts to the console are refused (Origin "+o+" is not "+r.Host+").", http.StatusForbidden)
			return false
		}
	}
	return true
}

// logout ends the session and clears the cookie.
func (c *Console) logout(w http.ResponseWriter, r *http.Request) {
	if !c.sameOrigin(w, r) {
		return
	}
	if ck, err := r.Cookie(cookieName); err == nil {
		c.sessions.close(ck.Value)
	}
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: "", Path: "/console/", HttpOnly: true, MaxAge: -1, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, "/console/login", http.StatusSeeOther)
}
