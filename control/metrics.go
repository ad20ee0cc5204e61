package control

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/nbd"
)

// Metrics are the daemon's Prometheus metrics, on their own registry so
// tests and several daemons in one process never collide.
type Metrics struct {
	reg         *prometheus.Registry
	backups     *prometheus.CounterVec
	bytesRead   prometheus.Counter
	bytesStored prometheus.Counter
	duration    prometheus.Histogram
	jobsRunning prometheus.Gauge
	apiErrors   *prometheus.CounterVec
	gcRuns      prometheus.Counter
	gcFreed     prometheus.Counter
	gcChunks    prometheus.Counter
	verified    *prometheus.CounterVec
	repaired    prometheus.Counter
	logins      *prometheus.CounterVec
}

// NewMetrics registers the daemon's metrics, including the NBD server's
// counters, read live from its Stats.
func NewMetrics(srv *nbd.Server) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		backups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "volback_backups_total", Help: "Volume backups finished, by result and mode.",
		}, []string{"result", "mode"}),
		bytesRead: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "volback_backup_read_bytes_total", Help: "Bytes read from volumes by backups.",
		}),
		bytesStored: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "volback_backup_stored_bytes_total", Help: "Encoded bytes written to backup storages.",
		}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "volback_backup_duration_seconds", Help: "Wall time of successful backups.",
			Buckets: prometheus.ExponentialBuckets(0.05, 2, 16),
		}),
		jobsRunning: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "volback_jobs_running", Help: "Async API jobs running.",
		}),
		apiErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "volback_api_errors_total", Help: "API requests answered with an error, by code.",
		}, []string{"code"}),
	}
	m.gcRuns = prometheus.NewCounter(prometheus.CounterOpts{Name: "volback_gc_runs_total", Help: "Garbage collections finished."})
	m.gcFreed = prometheus.NewCounter(prometheus.CounterOpts{Name: "volback_gc_freed_bytes_total", Help: "Encoded bytes of chunks deleted by garbage collection."})
	m.gcChunks = prometheus.NewCounter(prometheus.CounterOpts{Name: "volback_gc_deleted_chunks_total", Help: "Chunks deleted by garbage collection."})
	m.verified = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "volback_verifications_total",
		Help: "Backup verifications, by result: ok, or corrupt (a bad or missing chunk remains)."}, []string{"result"})
	m.repaired = prometheus.NewCounter(prometheus.CounterOpts{Name: "volback_verify_repaired_chunks_total",
		Help: "Stored chunks rewritten by verification from a live volume that still holds their content."})
	m.logins = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "volback_login_failures_total",
		Help: "Logins refused, by reason: password (checked and wrong) or throttled (refused unchecked after repeated failures)."}, []string{"reason"})
	m.reg.MustRegister(m.logins, m.backups, m.bytesRead, m.bytesStored, m.duration, m.jobsRunning, m.apiErrors, m.gcRuns, m.gcFreed, m.gcChunks,
		m.verified, m.repaired,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if srv != nil {
		st := &srv.Stats
		m.reg.MustRegister(
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "volback_nbd_requests_total", Help: "NBD requests received."},
				func() float64 { return float64(st.Requests.Load()) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "volback_nbd_errors_total", Help: "NBD error replies sent."},
				func() float64 { return float64(st.Errors.Load()) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "volback_nbd_read_bytes_total", Help: "Bytes read by NBD clients."},
				func() float64 { return float64(st.BytesRead.Load()) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "volback_nbd_written_bytes_total", Help: "Bytes written by NBD clients."},
				func() float64 { return float64(st.BytesWritten.Load()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "volback_nbd_connections", Help: "Open NBD connections."},
				func() float64 { return float64(st.Connections.Load()) }),
		)
	}
	return m
}

// Handler serves the metrics in Prometheus' text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

func (m *Metrics) backupDone(mode string, read, stored int64, seconds float64) {
	if m == nil {
		return
	}
	m.backups.WithLabelValues("success", mode).Inc()
	m.bytesRead.Add(float64(read))
	m.bytesStored.Add(float64(stored))
	m.duration.Observe(seconds)
}

func (m *Metrics) backupFailed() {
	if m != nil {
		m.backups.WithLabelValues("failure", "").Inc()
	}
}

func (m *Metrics) apiError(code string) {
	if m != nil {
		m.apiErrors.WithLabelValues(code).Inc()
	}
}

func (m *Metrics) jobStarted() {
	if m != nil {
		m.jobsRunning.Inc()
	}
}

func (m *Metrics) jobEnded() {
	if m != nil {
		m.jobsRunning.Dec()
	}
}

func (m *Metrics) gcDone(r *chunkstore.GCReport) {
	if m == nil || r == nil || r.DryRun {
		return
	}
	m.gcRuns.Inc()
	m.gcFreed.Add(float64(r.BytesDeleted))
	m.gcChunks.Add(float64(r.ChunksDeleted))
}

func (m *Metrics) loginFailed(reason string) {
	if m == nil {
		return
	}
	m.logins.WithLabelValues(reason).Inc()
}

func (m *Metrics) verifyDone(ok bool, repaired int) {
	if m == nil {
		return
	}
	result := "ok"
	if !ok {
		result = "corrupt"
	}
	m.verified.WithLabelValues(result).Inc()
	m.repaired.Add(float64(repaired))
}
