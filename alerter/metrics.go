package alerter

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/pulseboard/pulseboard/alerter/internal/channel"
	"github.com/pulseboard/pulseboard/alerter/internal/store"
)

// Bounded label values. The scheduled job's label is job_name, never job: Prometheus
// sets job (and instance) on every scraped series, and renames a clashing exported label
// to exported_job.
var (
	alertKinds   = []string{kindThreshold, kindResolved}
	emailKinds   = []string{kindThreshold, kindResolved, kindDigest, kindVerification}
	skipReasons  = []string{skipUnverified, skipRateLimited, skipStale}
	jobNames     = []string{JobDigest, JobRetention}
	jobOutcomes  = []string{OutcomeSuccess, OutcomePartial, OutcomeFailure, OutcomeSkipped}
	failureKinds = []string{"transient", "permanent"}
	channelKinds = append([]string{store.KindEmail}, channel.Kinds()...)
	outcomes     = []string{outcomeSent, outcomeRetry, outcomeFailed, outcomeSkipped}
)

// Outcomes of a notification delivery attempt (pulseboard_alerter_notifications_total).
const (
	outcomeSent    = "sent"
	outcomeRetry   = "retry"
	outcomeFailed  = "failed"
	outcomeSkipped = "skipped"
)

// metrics are the alerter's Prometheus collectors. No label carries a project or user.
type metrics struct {
	alertsFired   *prometheus.CounterVec
	emailsSent    *prometheus.CounterVec
	emailsFailed  *prometheus.CounterVec
	emailsSkipped *prometheus.CounterVec
	// notifications and notificationLatency cover every channel (email included).
	notifications       *prometheus.CounterVec
	notificationLatency *prometheus.HistogramVec
	evalLag             prometheus.Histogram
	storedWait          prometheus.Histogram
	evalErrors          prometheus.Counter
	fetchErrors         prometheus.Counter
	jobDuration         *prometheus.HistogramVec
	jobRuns             *prometheus.CounterVec
	commitErrors        prometheus.Counter
	messagesTaken       prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	m := &metrics{
		alertsFired: f.NewCounterVec(prometheus.CounterOpts{
			Name: "pulseboard_alerter_alerts_fired_total",
			Help: "Alerts recorded (pending delivery), by kind: threshold or resolved.",
		}, []string{"kind"}),
		emailsSent: f.NewCounterVec(prometheus.CounterOpts{
			Name: "pulseboard_alerter_emails_sent_total",
			Help: "Emails handed to the transport (SMTP server, or the log without SMTP_HOST), by kind.",
		}, []string{"kind"}),
		emailsFailed: f.NewCounterVec(prometheus.CounterOpts{
			Name: "pulseboard_alerter_emails_failed_total",
			Help: "Failed delivery attempts, by kind and failure: transient (retried with backoff) or permanent (marked failed).",
		}, []string{"kind", "failure"}),
		emailsSkipped: f.NewCounterVec(prometheus.CounterOpts{
			Name: "pulseboard_alerter_emails_skipped_total",
			Help: "Emails not sent on purpose, by kind and reason: unverified (recipient address not verified), rate_limited (ALERT_MAIL_PER_RECIPIENT_PER_HOUR), stale (a verification link expired, used or superseded before its mail went out).",
		}, []string{"kind", "reason"}),
		notifications: f.NewCounterVec(prometheus.CounterOpts{
			Name: "pulseboard_alerter_notifications_total",
			Help: "Alert notification delivery outcomes by channel kind (email, webhook, slack) and outcome: sent, retry (a failed attempt, retried with backoff), failed (given up), skipped (email not sent on purpose).",
		}, []string{"kind", "outcome"}),
		notificationLatency: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "pulseboard_alerter_notification_latency_seconds",
			Help:    "Time from recording an alert to its notification being sent, by channel kind (retries included).",
			Buckets: prometheus.ExponentialBuckets(0.05, 2, 16),
		}, []string{"kind"}),
		evalLag: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "pulseboard_alerter_window_evaluation_lag_seconds",
			Help:    "Delay from the receive time of the newest error of a project in a batch to the commit of that project's window evaluation.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 14),
		}),
		storedWait: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "pulseboard_alerter_stored_wait_seconds",
			Help:    "Time a batch waited for the consumer group to store it before its windows could be evaluated.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 14),
		}),
		evalErrors: f.NewCounter(prometheus.CounterOpts{
			Name: "pulseboard_alerter_evaluation_errors_total",
			Help: "Failed window evaluations or resolution checks (retried with backoff; offsets wait).",
		}),
		fetchErrors: f.NewCounter(prometheus.CounterOpts{
			Name: "pulseboard_alerter_fetch_errors_total",
			Help: "Errors from the Kafka reader or from reading the consumer group's offsets.",
		}),
		commitErrors: f.NewCounter(prometheus.CounterOpts{
			Name: "pulseboard_alerter_commit_errors_total",
			Help: "Failed offset commits (the batch is evaluated again after redelivery; evaluation is idempotent).",
		}),
		messagesTaken: f.NewCounter(prometheus.CounterOpts{
			Name: "pulseboard_alerter_messages_processed_total",
			Help: "Messages of the events topic whose offsets the alerter committed.",
		}),
		jobDuration: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "pulseboard_alerter_job_duration_seconds",
			Help:    "Duration of scheduled job runs (digest, retention), whatever their outcome.",
			Buckets: prometheus.ExponentialBuckets(0.01, 4, 10),
		}, []string{"job_name"}),
		jobRuns: f.NewCounterVec(prometheus.CounterOpts{
			Name: "pulseboard_alerter_job_runs_total",
			Help: "Scheduled job runs by job and outcome: success, partial (some emails left to retry), failure, skipped (another instance holds the job, or the slot is done).",
		}, []string{"job_name", "outcome"}),
	}
	for _, k := range alertKinds {
		m.alertsFired.WithLabelValues(k)
	}
	for _, k := range emailKinds {
		m.emailsSent.WithLabelValues(k)
		for _, f := range failureKinds {
			m.emailsFailed.WithLabelValues(k, f)
		}
		for _, r := range skipReasons {
			m.emailsSkipped.WithLabelValues(k, r)
		}
	}
	for _, k := range channelKinds {
		m.notificationLatency.WithLabelValues(k)
		for _, o := range outcomes {
			m.notifications.WithLabelValues(k, o)
		}
	}
	for _, j := range jobNames {
		m.jobDuration.WithLabelValues(j)
		for _, o := range jobOutcomes {
			m.jobRuns.WithLabelValues(j, o)
		}
	}
	return m
}
