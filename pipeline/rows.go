package pipeline

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/gessync/gessync/cdc"
)

// visibleWaits are the pauses before a streamed change's GES row, or a row it leads to, is
// believed gone: about 130 ms in all.
//
// PostgreSQL writes and flushes a transaction's commit record, which wakes the walsender, before
// it marks the transaction finished for other sessions (RecordTransactionCommit, then
// ProcArrayEndTransaction, in CommitTransaction). So a change can reach gessync, and gessync can
// read its row, while the transaction is still invisible to the read: the row seems gone, or
// its customer does. On a busy machine the window is milliseconds. Believing it would skip a
// committed change (a row read to fill an unchanged TOAST value), plan an invoice without its
// customer's CIS settings, or take a refused change for a superseded one and never log it.
var visibleWaits = []time.Duration{time.Millisecond, 2 * time.Millisecond, 4 * time.Millisecond, 8 * time.Millisecond, 16 * time.Millisecond, 32 * time.Millisecond, 64 * time.Millisecond}

// readRow is rows.Row for a record read on behalf of a change committed at lsn: when the row
// seems gone, it is read again after each of visibleWaits before cdc.ErrRowGone is believed.
// For lsn 0 (a resync, a backfill: nothing was just committed) the first answer stands.
func readRow(ctx context.Context, rows Rows, lsn pglogrepl.LSN, table string, id int64) (cdc.Row, error) {
	row, err := rows.Row(ctx, table, id)
	if lsn == 0 {
		return row, err
	}
	for _, d := range visibleWaits {
		if !errors.Is(err, cdc.ErrRowGone) {
			return row, err
		}
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		row, err = rows.Row(ctx, table, id)
	}
	return row, err
}
