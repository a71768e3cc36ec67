package daemon

import (
	"context"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/gessync/gessync/pipeline"
	"github.com/gessync/gessync/state"
)

// Metrics are the daemon's Prometheus metrics, all named gessync_*. Counters are fed as things
// happen (pipeline Observe, the Sage client's Observer); gauges of lag, backlog and open errors
// are read from Status when scraped. Each Daemon has its own registry: no global state.
type Metrics struct {
	reg *prometheus.Registry
	d   *Daemon

	changes        *prometheus.CounterVec
	sageRequests   *prometheus.CounterVec
	sageRetries    *prometheus.CounterVec
	sageRateLimits *prometheus.CounterVec
	tokenRefreshes *prometheus.CounterVec
	indexOff       *prometheus.CounterVec
}

func newMetrics() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.changes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gessync_changes_total",
		Help: "GES row changes handled, by table (customers, invoices, payments) and outcome (synced, failed, skipped).",
	}, []string{"table", "outcome"})
	m.sageRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gessync_sage_requests_total",
		Help: "HTTP attempts sent to Sage, by method, endpoint (e.g. contacts/{id}, token) and status (0 when no answer came).",
	}, []string{"method", "endpoint", "status"})
	m.sageRetries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gessync_sage_retries_total",
		Help: "Sage attempts sent again after a network error, 408, 429 or 5xx, by endpoint.",
	}, []string{"endpoint"})
	m.sageRateLimits = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gessync_sage_rate_limited_total",
		Help: "Sage answers 429 Too Many Requests, by endpoint.",
	}, []string{"endpoint"})
	m.tokenRefreshes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gessync_sage_token_refreshes_total",
		Help: "Sage refresh-token exchanges, by result (ok, failed).",
	}, []string{"result"})
	m.indexOff = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gessync_contact_index_off_total",
		Help: "Times a Sage business's contact index was turned off for 15 minutes, its customers searched for in Sage meanwhile, by reason (" +
			strings.Join(pipeline.IndexOffReasons, ", ") + ").",
	}, []string{"reason"})
	m.reg.MustRegister(m.changes, m.sageRequests, m.sageRetries, m.sageRateLimits, m.tokenRefreshes, m.indexOff,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, t := range []string{"customers", "invoices", "payments"} {
		for _, o := range []state.Outcome{state.Synced, state.Failed, state.Skipped} {
			m.changes.WithLabelValues(t, string(o))
		}
	}
	m.tokenRefreshes.WithLabelValues("ok")
	m.tokenRefreshes.WithLabelValues("failed")
	for _, r := range pipeline.IndexOffReasons {
		m.indexOff.WithLabelValues(r)
	}
	return m
}

// contactIndexOff is the pipeline's ContactIndexOff hook.
func (m *Metrics) contactIndexOff(reason string) {
	m.indexOff.WithLabelValues(reason).Inc()
}

// attach makes the scrape-time gauges read d's status.
func (m *Metrics) attach(d *Daemon) {
	m.d = d
	m.reg.MustRegister(statusCollector{m})
}

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// Registry is the registry the metrics live in (for tests and embedding).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// observeChange is the pipeline's Observe hook.
func (m *Metrics) observeChange(table string, o state.Outcome) {
	m.changes.WithLabelValues(table, string(o)).Inc()
}

// Request counts one HTTP attempt to Sage (sage.Observer).
func (m *Metrics) Request(method, path string, status int) {
	ep := Endpoint(path)
	m.sageRequests.WithLabelValues(method, ep, strconv.Itoa(status)).Inc()
	if status == http.StatusTooManyRequests {
		m.sageRateLimits.WithLabelValues(ep).Inc()
	}
}

// Retry counts one attempt sent again (sage.Observer).
func (m *Metrics) Retry(method, path string, status int) {
	m.sageRetries.WithLabelValues(Endpoint(path)).Inc()
}

// TokenRefresh counts one refresh-token exchange (sage.Observer).
func (m *Metrics) TokenRefresh(err error) {
	if err != nil {
		m.tokenRefreshes.WithLabelValues("failed").Inc()
		return
	}
	m.tokenRefreshes.WithLabelValues("ok").Inc()
}

var (
	versionSegment  = regexp.MustCompile(`^v[0-9]+(\.[0-9]+)?$`)
	resourceSegment = regexp.MustCompile(`^[a-z_]{1,40}$`)
)

// Endpoint turns a Sage URL path into a metric label without record ids: the API version is
// dropped and every second segment is an id, so "/v3.1/contacts/7f3a" is "contacts/{id}" and
// "/token" is "token".
func Endpoint(path string) string {
	var segs []string
	for _, s := range strings.Split(strings.Trim(path, "/"), "/") {
		if s != "" {
			segs = append(segs, s)
		}
	}
	if len(segs) > 0 && versionSegment.MatchString(segs[0]) {
		segs = segs[1:]
	}
	if len(segs) == 0 {
		return "/"
	}
	out := make([]string, len(segs))
	for i, s := range segs {
		switch {
		case i%2 == 1:
			out[i] = "{id}"
		case resourceSegment.MatchString(s):
			out[i] = s
		default:
			out[i] = "{other}"
		}
	}
	return strings.Join(out, "/")
}

// statusCollector reads the daemon's Status at scrape time.
type statusCollector struct{ m *Metrics }

var (
	descLagBytes   = prometheus.NewDesc("gessync_replication_lag_bytes", "Server WAL end minus the safe LSN (checkpoint_lsn), in bytes.", nil, nil)
	descLagSeconds = prometheus.NewDesc("gessync_replication_lag_seconds", "Age of the oldest commit not yet fully handled; 0 when caught up.", nil, nil)
	descConnected  = prometheus.NewDesc("gessync_replication_connected", "1 while the replication stream is connected.", nil, nil)
	descCheckpoint = prometheus.NewDesc("gessync_checkpoint_lsn", "The safe LSN told to the slot, as a byte position.", nil, nil)
	descWALEnd     = prometheus.NewDesc("gessync_server_wal_end_lsn", "pg_current_wal_lsn() of the GES database, as a byte position.", nil, nil)
	descPendingTx  = prometheus.NewDesc("gessync_pending_transactions", "Transactions received but not fully handled.", nil, nil)
	descBacklog    = prometheus.NewDesc("gessync_backlog_changes", "Changes queued or being applied, by company.", []string{"company_id"}, nil)
	descBacklogAge = prometheus.NewDesc("gessync_backlog_oldest_seconds", "Age of the company's oldest change in its backlog; 0 when empty.", []string{"company_id"}, nil)
	descOpenErrors = prometheus.NewDesc("gessync_open_errors", "Unresolved sync-log errors (records that need a person), by company.", []string{"company_id"}, nil)
	descCompany    = prometheus.NewDesc("gessync_company_connected", "1 when the company is connected to a Sage business, 0 when not connected or lost.", []string{"company_id"}, nil)
	descTokenLeft  = prometheus.NewDesc("gessync_sage_refresh_token_expiry_seconds", "Seconds until the company's Sage refresh token expires (reconnect needed if it does).", []string{"company_id"}, nil)
	descStatusOK   = prometheus.NewDesc("gessync_status_up", "1 when the last scrape could read the daemon's status (state and GES database reachable).", nil, nil)
)

// Describe sends the descriptors of the scrape-time gauges (prometheus.Collector).
func (c statusCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descLagBytes, descLagSeconds, descConnected, descCheckpoint, descWALEnd, descPendingTx,
		descBacklog, descBacklogAge, descOpenErrors, descCompany, descTokenLeft, descStatusOK} {
		ch <- d
	}
}

// Collect reads the status and sends the gauges (prometheus.Collector).
func (c statusCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := c.m.d.Status(ctx)
	up := 1.0
	if err != nil {
		up = 0
		c.m.d.log.Warn("metrics: reading status", "err", err)
	}
	ch <- prometheus.MustNewConstMetric(descStatusOK, prometheus.GaugeValue, up)
	ch <- prometheus.MustNewConstMetric(descConnected, prometheus.GaugeValue, b2f(st.ReplicationConnected))
	ch <- prometheus.MustNewConstMetric(descLagSeconds, prometheus.GaugeValue, st.LagSeconds)
	ch <- prometheus.MustNewConstMetric(descPendingTx, prometheus.GaugeValue, float64(st.PendingTransactions))
	if cp, perr := pglogrepl.ParseLSN(st.CheckpointLSN); perr == nil {
		ch <- prometheus.MustNewConstMetric(descCheckpoint, prometheus.GaugeValue, float64(cp))
	}
	if err != nil {
		return // WAL end and companies are unknown
	}
	ch <- prometheus.MustNewConstMetric(descLagBytes, prometheus.GaugeValue, float64(st.LagBytes))
	if end, perr := pglogrepl.ParseLSN(st.ServerWALEndLSN); perr == nil {
		ch <- prometheus.MustNewConstMetric(descWALEnd, prometheus.GaugeValue, float64(end))
	}
	now := time.Now()
	for _, co := range st.Companies {
		id := strconv.FormatInt(co.CompanyID, 10)
		ch <- prometheus.MustNewConstMetric(descBacklog, prometheus.GaugeValue, float64(co.Pending), id)
		age := 0.0
		if co.OldestPendingAt != nil {
			age = now.Sub(*co.OldestPendingAt).Seconds()
		}
		ch <- prometheus.MustNewConstMetric(descBacklogAge, prometheus.GaugeValue, age, id)
		ch <- prometheus.MustNewConstMetric(descOpenErrors, prometheus.GaugeValue, float64(co.OpenErrors), id)
		ch <- prometheus.MustNewConstMetric(descCompany, prometheus.GaugeValue, b2f(co.Connected && co.State == "connected"), id)
		if co.RefreshTokenExpiresAt != nil {
			ch <- prometheus.MustNewConstMetric(descTokenLeft, prometheus.GaugeValue, co.RefreshTokenExpiresAt.Sub(now).Seconds(), id)
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
