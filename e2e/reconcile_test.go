package e2e_test

import (
	"context"
	"os/exec"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/gessync/gessync/sink/sage"
)

// reconcile runs `gessync reconcile --company N` against the env's daemon.
func (e *env) reconcile(company string) (string, error) {
	e.t.Helper()
	out, err := exec.Command(binary, "reconcile", "--company", company, "--url", e.base()).CombinedOutput()
	return string(out), err
}

func TestReconcileReportsDriftAndExitsNonZero(t *testing.T) {
	e := newSyncedSample(t)
	out, err := e.reconcile("1")
	require.NoError(t, err, out)
	require.Contains(t, out, "Sage matches GES")

	// Someone edits Sage by hand: a contact typed in, an invoice's line changed.
	_, err = e.handSession(e.business(0).ID).CreateContact(context.Background(), sage.ContactRequest{Name: "Typed By Hand", ContactTypeIDs: []string{"CUSTOMER"}})
	require.NoError(t, err)
	out, err = e.reconcile("1")
	require.Error(t, err, "drift exits non-zero")
	require.Contains(t, out, "extra")
	require.Contains(t, out, "Typed By Hand")

	// GES stored totals that disagree with its own lines (Sage gets the lines' figures) show as drift.
	e.exec(`UPDATE invoices SET subtotal = 1.00, updated_at = now() WHERE id = 20`)
	e.caughtUp()
	out, _ = e.reconcile("1")
	require.Contains(t, out, "amount")
	require.Contains(t, out, "HH-1004")
}
