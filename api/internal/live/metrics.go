package live

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// transport is the bounded label value of every per-stream metric.
type transport string

const (
	transportWS  transport = "ws"
	transportSSE transport = "sse"
	transportSIO transport = "socketio" // Socket.IO (sio.go, eio.go)
)

// Resync reasons (label values).
const (
	resyncOverflow  = "overflow"    // the client's queue was full and messages were dropped
	resyncReconnect = "reconnect"   // Redis reconnected: anything published in the gap is gone
	resyncReplay    = "replay"      // an SSE reconnect missed more than the replay bounds
	resyncBusy      = "replay_busy" // an SSE reconnect found no free replay slot
)

// Rejection reasons (label values): the error code sent before the upgrade.
const (
	rejectUnauthorized = "unauthorized"
	rejectOrigin       = "forbidden_origin"
	rejectNotFound     = "not_found"
	rejectTooMany      = "rate_limited"
	rejectUnavailable  = "unavailable"
	rejectBadRequest   = "bad_request"
)

// Close reasons of streams closed by the server for being slow (label values).
const (
	slowWriteTimeout = "write_timeout" // a write did not complete within WriteTimeout
	slowQueueFull    = "queue_full"    // the queue stayed full for WriteTimeout
)

type transportMetrics struct {
	connections prometheus.Gauge
	sent        prometheus.Counter
	dropped     prometheus.Counter
}

type metrics struct {
	byTransport    map[transport]*transportMetrics
	resyncs        *prometheus.CounterVec
	slowClosed     *prometheus.CounterVec
	rejected       *prometheus.CounterVec
	replayed       prometheus.Counter
	replaysRunning prometheus.Gauge
	subscriptions  prometheus.Gauge
	reconnects     prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	connections := f.NewGaugeVec(prometheus.GaugeOpts{
		Name: "pulseboard_api_live_connections",
		Help: "Open live streams.",
	}, []string{"transport"})
	sent := f.NewCounterVec(prometheus.CounterOpts{
		Name: "pulseboard_api_live_messages_sent_total",
		Help: "Event messages written to live clients (replayed ones included).",
	}, []string{"transport"})
	dropped := f.NewCounterVec(prometheus.CounterOpts{
		Name: "pulseboard_api_live_messages_dropped_total",
		Help: "Event messages dropped because a client's queue was full.",
	}, []string{"transport"})
	m := &metrics{
		byTransport: map[transport]*transportMetrics{},
		resyncs: f.NewCounterVec(prometheus.CounterOpts{
			Name: "pulseboard_api_live_resyncs_sent_total",
			Help: `{"type":"resync"} messages written to live clients, by reason.`,
		}, []string{"transport", "reason"}),
		slowClosed: f.NewCounterVec(prometheus.CounterOpts{
			Name: "pulseboard_api_live_slow_clients_closed_total",
			Help: "Live clients disconnected for not keeping up, by reason.",
		}, []string{"transport", "reason"}),
		rejected: f.NewCounterVec(prometheus.CounterOpts{
			Name: "pulseboard_api_live_rejected_total",
			Help: "Live stream requests refused before the upgrade, by reason.",
		}, []string{"transport", "reason"}),
		replayed: f.NewCounter(prometheus.CounterOpts{
			Name: "pulseboard_api_live_replayed_events_total",
			Help: "Events replayed from Postgres to SSE clients that reconnected with Last-Event-ID.",
		}),
		replaysRunning: f.NewGauge(prometheus.GaugeOpts{
			Name: "pulseboard_api_live_replays_running",
			Help: "SSE replays running (each holds a replay slot and a Postgres connection).",
		}),
		subscriptions: f.NewGauge(prometheus.GaugeOpts{
			Name: "pulseboard_api_live_redis_subscriptions",
			Help: "Project channels this instance is subscribed to in Redis.",
		}),
		reconnects: f.NewCounter(prometheus.CounterOpts{
			Name: "pulseboard_api_live_redis_resubscriptions_total",
			Help: "Project channels re-subscribed after a Redis reconnect (each one sent its clients a resync).",
		}),
	}
	for _, t := range []transport{transportWS, transportSSE, transportSIO} {
		m.byTransport[t] = &transportMetrics{
			connections: connections.WithLabelValues(string(t)),
			sent:        sent.WithLabelValues(string(t)),
			dropped:     dropped.WithLabelValues(string(t)),
		}
		// Pre-create the labelled series so dashboards see zeros, not gaps.
		for _, r := range []string{resyncOverflow, resyncReconnect, resyncReplay, resyncBusy} {
			m.resyncs.WithLabelValues(string(t), r)
		}
		for _, r := range []string{slowWriteTimeout, slowQueueFull} {
			m.slowClosed.WithLabelValues(string(t), r)
		}
	}
	return m
}
