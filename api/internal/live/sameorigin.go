package live

import (
	"net/http"
	"strings"
)

// SameOrigin reports whether origin (an Origin header value) is the origin the request
// was addressed to, scheme aside: a page served by this api (the dashboard, issue 18)
// opening a stream back to it. Such a request is not cross-site, so it is admitted
// without being listed in AllowedOrigins. Host comes from the browser, which cannot be
// made to send another site's Origin with it; a proxy that rewrites Host makes this
// false, and such a deployment lists its public origin in CORS_ORIGIN as before.
func SameOrigin(r *http.Request, origin string) bool {
	if r.Host == "" {
		return false
	}
	o := normalizeOrigin(origin)
	host := strings.ToLower(r.Host)
	return o == "http://"+host || o == "https://"+host
}
