package api

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

type metrics struct {
	requests       *prometheus.CounterVec
	duration       *prometheus.HistogramVec
	loginThrottled *prometheus.CounterVec
	// registerThrottled counts registrations refused with 429 (scope ip or global).
	registerThrottled *prometheus.CounterVec
	refreshReuse      prometheus.Counter
	throttleFallback  prometheus.Counter
	hashRejected      prometheus.Counter
	// Email verification (verify.go).
	verifications         *prometheus.CounterVec
	verifyResendThrottled prometheus.Counter
}

// newMetrics registers the api's metrics. Labels are bounded: route is a ServeMux
// pattern (or "unmatched"/"preflight"), never a path with ids in it.
func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	m := &metrics{
		requests: f.NewCounterVec(prometheus.CounterOpts{
			Name: "pulseboard_api_http_requests_total",
			Help: "API HTTP requests by route pattern and status code.",
		}, []string{"route", "code"}),
		duration: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "pulseboard_api_http_request_duration_seconds",
			Help:    "API request latency by route pattern (for live streams: the stream's lifetime).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"route"}),
		loginThrottled: f.NewCounterVec(prometheus.CounterOpts{
			Name: "pulseboard_api_login_throttled_total",
			Help: "Login attempts refused with 429 because the account or the client IP is backing off.",
		}, []string{"scope"}),
		registerThrottled: f.NewCounterVec(prometheus.CounterOpts{
			Name: "pulseboard_api_register_throttled_total",
			Help: "Registrations refused with 429 because the client address or all clients together reached their limit.",
		}, []string{"scope"}),
		refreshReuse: f.NewCounter(prometheus.CounterOpts{
			Name: "pulseboard_api_refresh_reuse_detected_total",
			Help: "Rotated refresh tokens presented again after the grace window; each revoked its token family.",
		}),
		throttleFallback: f.NewCounter(prometheus.CounterOpts{
			Name: "pulseboard_api_login_throttle_fallback_total",
			Help: "Login throttle operations served by the in-process table because Redis failed.",
		}),
		hashRejected: f.NewCounter(prometheus.CounterOpts{
			Name: "pulseboard_api_password_hash_rejected_total",
			Help: "Requests answered 503 because every password hashing slot was busy.",
		}),
		verifications: f.NewCounterVec(prometheus.CounterOpts{
			Name: "pulseboard_api_email_verifications_total",
			Help: "Verification links presented, by outcome: verified, unknown, used, expired, superseded.",
		}, []string{"outcome"}),
		verifyResendThrottled: f.NewCounter(prometheus.CounterOpts{
			Name: "pulseboard_api_verify_resend_throttled_total",
			Help: "Verification email resends refused with 429 by the per-account or per-address throttle.",
		}),
	}
	for _, o := range outcomeLabels {
		m.verifications.WithLabelValues(o)
	}
	m.loginThrottled.WithLabelValues("account")
	m.loginThrottled.WithLabelValues("ip")
	m.registerThrottled.WithLabelValues("ip")
	m.registerThrottled.WithLabelValues("global")
	return m
}
