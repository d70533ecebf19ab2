package live

import (
	"net/http/httptest"
	"testing"
)

// A page served by the api (the dashboard) opens streams from the api's own origin:
// admitted without a CORS_ORIGIN entry; any other origin is not.
func TestSameOrigin(t *testing.T) {
	t.Parallel()
	r := httptest.NewRequest("GET", "/realtime/x", nil)
	r.Host = "Dash.Example:3000"
	for o, want := range map[string]bool{
		"http://dash.example:3000": true, "https://dash.example:3000": true, "HTTP://DASH.EXAMPLE:3000/": true,
		"http://dash.example": false, "http://dash.example:3001": false, "null": false, "": false,
		"http://dash.example:3000.evil.example": false, "ws://dash.example:3000": false,
	} {
		if got := SameOrigin(r, o); got != want {
			t.Errorf("SameOrigin(Host %s, Origin %q) = %v, want %v", r.Host, o, got, want)
		}
	}
	r.Host = ""
	if SameOrigin(r, "http://") {
		t.Error("an empty Host matched")
	}
}
