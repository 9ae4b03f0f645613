package schedule

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/pipeline"
)

// metrics are one Server's Prometheus collectors, registered on a registry of its own
// (never the global one), so that two servers in one process — tests do that — do not
// collide.
type metrics struct {
	reg *prometheus.Registry

	rowsRead      *prometheus.CounterVec // sync
	rowsSent      *prometheus.CounterVec
	rowsUnchanged *prometheus.CounterVec
	rowsRejected  *prometheus.CounterVec
	filesRead     *prometheus.CounterVec
	filesRejected *prometheus.CounterVec
	delivered     *prometheus.CounterVec // sync, destination
	failed        *prometheus.CounterVec
	duration      *prometheus.HistogramVec // sync, status
	runs          *prometheus.CounterVec   // sync, status
	skipped       *prometheus.CounterVec   // sync
	elsewhere     *prometheus.CounterVec   // sync
	lastSuccess   *prometheus.GaugeVec     // sync
	inProgress    *prometheus.GaugeVec     // sync
	nextRun       *prometheus.GaugeVec     // sync
	batches       *prometheus.GaugeVec     // sync, destination
	liveRows      *prometheus.CounterVec   // sync
	liveBytes     *prometheus.CounterVec
	// Event-driven discovery (source.discovery.type sqs), from each run's report.
	queueMessages *prometheus.CounterVec // sync, outcome: received, deleted, ignored, malformed
	queueLag      *prometheus.GaugeVec   // sync
}

// durationBuckets spans the runs backflow sees: a few seconds for an incremental run
// with nothing new, hours for a full sync of a large export.
var durationBuckets = []float64{0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400}

func newMetrics(syncs []config.Sync) *metrics {
	reg := prometheus.NewRegistry()
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		c := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "backflow", Name: name, Help: help}, labels)
		reg.MustRegister(c)
		return c
	}
	gauge := func(name, help string, labels ...string) *prometheus.GaugeVec {
		g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "backflow", Name: name, Help: help}, labels)
		reg.MustRegister(g)
		return g
	}
	m := &metrics{
		reg:           reg,
		rowsRead:      counter("rows_read_total", "Rows read from the source, added from each run's report when it ends.", "sync"),
		rowsSent:      counter("rows_sent_total", "Rows sent to the destinations, from each run's report.", "sync"),
		rowsUnchanged: counter("rows_unchanged_total", "Rows skipped because their content had not changed (mode diff), from each run's report.", "sync"),
		rowsRejected:  counter("rows_rejected_total", "Rows rejected (no identifiers, too large, or refused by a destination), from each run's report.", "sync"),
		filesRead:     counter("files_read_total", "Source files read, from each run's report.", "sync"),
		filesRejected: counter("files_rejected_total", "Source files rejected by validation, from each run's report.", "sync"),
		delivered:     counter("messages_delivered_total", "Messages a destination acknowledged, from each run's report.", "sync", "destination"),
		failed:        counter("messages_failed_total", "Messages a destination refused or that could not be delivered, from each run's report.", "sync", "destination"),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "backflow", Name: "run_duration_seconds",
			Help:    "How long runs took, by final status (ok, partial, failed).",
			Buckets: durationBuckets,
		}, []string{"sync", "status"}),
		runs:        counter("runs_total", "Runs that ended, by final status (ok, partial, failed).", "sync", "status"),
		skipped:     counter("runs_skipped_total", "Scheduled runs skipped because the sync was still running.", "sync"),
		elsewhere:   counter("runs_elsewhere_total", "Runs not run by this process because another one sharing the state ran or runs them (replicas).", "sync"),
		lastSuccess: gauge("last_success_timestamp_seconds", "Unix time at which the last run with status ok or partial ended; 0 before the first.", "sync"),
		inProgress:  gauge("runs_in_progress", "Runs of the sync executing now (1 or 0: a sync never overlaps itself).", "sync"),
		nextRun:     gauge("next_run_timestamp_seconds", "Unix time of the next scheduled run; 0 for a manual sync or after shutdown began.", "sync"),
		batches:     gauge("batches_in_flight", "Batches being written to a destination now.", "sync", "destination"),
		liveRows:    counter("source_rows_read_total", "Rows read from the source, counted as they are read (rows_read_total is added when a run ends).", "sync"),
		liveBytes:   counter("source_bytes_read_total", "Bytes read from the source, counted as they are read.", "sync"),
		queueMessages: counter("queue_messages_total", "Messages of a sync's S3 event notification queue, by what became of them "+
			"(received; deleted once their files were handled; events ignored as outside the source; malformed), from each run's report.", "sync", "outcome"),
		queueLag: gauge("queue_lag_seconds", "Age of the oldest message the last run of the sync received from its queue.", "sync"),
	}
	reg.MustRegister(m.duration)
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	// Create every series a sync will have, so dashboards and alerts see 0 rather than
	// nothing before the first run.
	for _, sc := range syncs {
		n := sc.Name
		for _, c := range []*prometheus.CounterVec{m.rowsRead, m.rowsSent, m.rowsUnchanged, m.rowsRejected,
			m.filesRead, m.filesRejected, m.skipped, m.elsewhere, m.liveRows, m.liveBytes} {
			c.WithLabelValues(n)
		}
		for _, st := range []string{pipeline.StatusOK, pipeline.StatusPartial, pipeline.StatusFailed} {
			m.runs.WithLabelValues(n, st)
		}
		if sc.Source.Discovery.Type == config.DiscoverySQS {
			for _, o := range []string{"received", "deleted", "ignored", "malformed"} {
				m.queueMessages.WithLabelValues(n, o)
			}
			m.queueLag.WithLabelValues(n)
		}
		m.lastSuccess.WithLabelValues(n)
		m.inProgress.WithLabelValues(n)
		m.nextRun.WithLabelValues(n)
		for _, d := range sc.Destinations {
			dn := destinationName(d) // only the name and type: the other fields may hold secrets
			m.delivered.WithLabelValues(n, dn)
			m.failed.WithLabelValues(n, dn)
			m.batches.WithLabelValues(n, dn)
		}
	}
	return m
}

func destinationName(d config.Destination) string {
	if d.Name != "" {
		return d.Name
	}
	return d.Type
}

// observeRun adds the report of a finished run of sync n to the counters. status is
// the normalised label value (ok, partial or failed).
func (m *metrics) observeRun(n string, r *pipeline.Report, status string, elapsed time.Duration, ended time.Time) {
	m.rowsRead.WithLabelValues(n).Add(nonNegative(r.Rows.Read))
	m.rowsSent.WithLabelValues(n).Add(nonNegative(r.Rows.Sent))
	m.rowsUnchanged.WithLabelValues(n).Add(nonNegative(r.Rows.Unchanged))
	m.rowsRejected.WithLabelValues(n).Add(nonNegative(r.Rows.Rejected))
	m.filesRead.WithLabelValues(n).Add(nonNegative(int64(r.Files.Read)))
	m.filesRejected.WithLabelValues(n).Add(nonNegative(int64(r.Files.Rejected)))
	for dest, c := range r.Destinations {
		if c == nil {
			continue
		}
		m.delivered.WithLabelValues(n, dest).Add(nonNegative(c.Delivered))
		m.failed.WithLabelValues(n, dest).Add(nonNegative(c.Failed))
	}
	if d := r.Discovery; d != nil {
		m.queueMessages.WithLabelValues(n, "received").Add(float64(max(d.Received, 0)))
		m.queueMessages.WithLabelValues(n, "deleted").Add(float64(max(d.Deleted, 0)))
		m.queueMessages.WithLabelValues(n, "ignored").Add(float64(max(d.Ignored, 0)))
		m.queueMessages.WithLabelValues(n, "malformed").Add(float64(max(d.Malformed, 0)))
		m.queueLag.WithLabelValues(n).Set(d.LagSeconds)
	}
	m.duration.WithLabelValues(n, status).Observe(elapsed.Seconds())
	m.runs.WithLabelValues(n, status).Inc()
	if status == pipeline.StatusOK || status == pipeline.StatusPartial {
		m.lastSuccess.WithLabelValues(n).Set(float64(ended.UnixNano()) / 1e9)
	}
}

// nonNegative guards Counter.Add, which panics on a negative value.
func nonNegative(v int64) float64 {
	if v < 0 {
		return 0
	}
	return float64(v)
}

// observer is the pipeline.Observer side of the metrics and of the status page's live
// view. Every method is a few atomic operations on already-created series and
// counters: it never blocks the pipeline.
type observer struct {
	m    *metrics
	live map[string]*liveRun // read-only after NewServer
}

var _ pipeline.ProgressObserver = observer{}

func (o observer) RowsRead(sync string, rows, bytes int64) {
	if rows > 0 {
		o.m.liveRows.WithLabelValues(sync).Add(float64(rows))
	}
	if bytes > 0 {
		o.m.liveBytes.WithLabelValues(sync).Add(float64(bytes))
	}
	o.live[sync].read(rows, bytes)
}

func (o observer) BatchStarted(sync, destination string) {
	o.m.batches.WithLabelValues(sync, destination).Inc()
	if d := o.live[sync].dest(destination); d != nil {
		d.inFlight.Add(1)
	}
}

// BatchDone only closes the in-flight bracket for the metrics: delivered and failed
// reach the counters from the run's report, so that they are counted once. The live
// view counts them as they come, and is reset when the next run begins.
func (o observer) BatchDone(sync, destination string, delivered, failed int64) {
	o.m.batches.WithLabelValues(sync, destination).Dec()
	if d := o.live[sync].dest(destination); d != nil {
		d.inFlight.Add(-1)
		d.delivered.Add(max(delivered, 0))
		d.failed.Add(max(failed, 0))
	}
}

// Planned and FileRead feed the live view's progress (files and bytes to read).
func (o observer) Planned(sync string, files int, bytes int64) { o.live[sync].planned(files, bytes) }
func (o observer) FileRead(sync, _ string)                     { o.live[sync].fileRead() }
