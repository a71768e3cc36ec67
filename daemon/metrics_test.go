package daemon

import (
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/gessync/gessync/state"
)

func TestEndpointDropsIDsAndVersion(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ path, want string }{
		{"/v3.1/contacts", "contacts"},
		{"/v3.1/contacts/7f3a9c", "contacts/{id}"},
		{"/v3.1/sales_invoices/abc/release", "sales_invoices/{id}/release"},
		{"/token", "token"},
		{"/oauth/token", "oauth/{id}"},
		{"/", "/"},
		{"/v3.1/Weird-Thing", "{other}"},
	} {
		require.Equal(t, tc.want, Endpoint(tc.path), tc.path)
	}
}

func TestMetricsCountChangesSageRequestsRetriesRateLimitsAndRefreshes(t *testing.T) {
	t.Parallel()
	m := newMetrics()
	m.observeChange("customers", state.Synced)
	m.observeChange("customers", state.Synced)
	m.observeChange("invoices", state.Failed)
	m.Request("POST", "/v3.1/contacts", 201)
	m.Request("GET", "/v3.1/contacts/1", 429)
	m.Retry("GET", "/v3.1/contacts/1", 429)
	m.Request("GET", "/v3.1/contacts/1", 200)
	m.TokenRefresh(nil)
	m.TokenRefresh(errors.New("invalid_grant"))

	require.Equal(t, 2.0, value(m.changes.WithLabelValues("customers", "synced")))
	require.Equal(t, 1.0, value(m.changes.WithLabelValues("invoices", "failed")))
	require.Equal(t, 0.0, value(m.changes.WithLabelValues("payments", "skipped")))
	require.Equal(t, 1.0, value(m.sageRequests.WithLabelValues("POST", "contacts", "201")))
	require.Equal(t, 1.0, value(m.sageRequests.WithLabelValues("GET", "contacts/{id}", "429")))
	require.Equal(t, 1.0, value(m.sageRateLimits.WithLabelValues("contacts/{id}")))
	require.Equal(t, 1.0, value(m.sageRetries.WithLabelValues("contacts/{id}")))
	require.Equal(t, 1.0, value(m.tokenRefreshes.WithLabelValues("ok")))
	require.Equal(t, 1.0, value(m.tokenRefreshes.WithLabelValues("failed")))
}

func TestCheckSyncTogglesRefusesInvoicesWithoutCustomers(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name                         string
		customers, invoices, payment bool
		wantField                    string
	}{
		{name: "ok - everything", customers: true, invoices: true, payment: true},
		{name: "ok - customers only", customers: true},
		{name: "ok - nothing"},
		{name: "ok - customers and invoices", customers: true, invoices: true},
		{name: "error - invoices without customers", invoices: true, wantField: "sync_invoices"},
		{name: "error - payments without invoices", customers: true, payment: true, wantField: "sync_payments"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckSyncToggles(tc.customers, tc.invoices, tc.payment)
			if tc.wantField == "" {
				require.NoError(t, err)
				return
			}
			var se *SettingsError
			require.ErrorAs(t, err, &se)
			require.Equal(t, tc.wantField, se.Field)
			require.Contains(t, se.Problem, "needs")
		})
	}
}

func value(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}
