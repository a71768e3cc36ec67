package pipeline

import (
	"context"
	"errors"
	"testing"

	"github.com/gessync/gessync/cdc"
)

// invisibleRows answers ErrRowGone for the first gone reads, then the row: a transaction whose
// commit was streamed before other sessions could see it.
type invisibleRows struct {
	gone, reads int
}

func (r *invisibleRows) Row(_ context.Context, table string, id int64) (cdc.Row, error) {
	r.reads++
	if r.reads <= r.gone {
		return nil, cdc.ErrRowGone
	}
	return cdc.Row{"id": {Text: "12"}}, nil
}

func TestAStreamedChangesRowIsReadAgainUntilItsTransactionIsVisible(t *testing.T) {
	ctx := context.Background()
	r := &invisibleRows{gone: 3}
	row, err := readRow(ctx, r, 0x1000, "customers", 12)
	if err != nil || row == nil {
		t.Fatalf("readRow = %v, %v; want the row once the transaction is visible", row, err)
	}
	if r.reads != 4 {
		t.Errorf("%d reads, want 4", r.reads)
	}

	// A row really gone stays gone, after a bounded number of reads.
	r = &invisibleRows{gone: 1 << 30}
	if _, err := readRow(ctx, r, 0x1000, "customers", 12); !errors.Is(err, cdc.ErrRowGone) {
		t.Fatalf("err = %v, want ErrRowGone", err)
	}
	if want := 1 + len(visibleWaits); r.reads != want {
		t.Errorf("%d reads, want %d", r.reads, want)
	}

	// Nothing was just committed for a resync or a backfill (LSN 0): the first answer stands.
	r = &invisibleRows{gone: 1}
	if _, err := readRow(ctx, r, 0, "customers", 12); !errors.Is(err, cdc.ErrRowGone) || r.reads != 1 {
		t.Fatalf("lsn 0: err = %v after %d reads, want ErrRowGone after 1", err, r.reads)
	}
}
