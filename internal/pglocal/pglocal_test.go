package pglocal_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/gessync/gessync/ges"
	"github.com/gessync/gessync/internal/pglocal"
)

func TestStartServesLogicalReplication(t *testing.T) {
	ctx := context.Background()
	s, err := pglocal.Start(ctx, pglocal.Options{})
	require.NoError(t, err)
	defer func() {
		if !t.Failed() {
			s.Remove()
		} else {
			s.Stop()
			t.Log(s.Dir)
		}
	}()
	require.NoError(t, s.CreateDatabase(ctx, "ges", ges.Schema))
	c, err := pgx.Connect(ctx, s.URL("ges"))
	require.NoError(t, err)
	defer c.Close(ctx)
	var level string
	require.NoError(t, c.QueryRow(ctx, "SHOW wal_level").Scan(&level))
	require.Equal(t, "logical", level)
	var n int
	require.NoError(t, c.QueryRow(ctx, "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('customers','invoices','payments')").Scan(&n))
	require.Equal(t, 3, n)

	// A crash and a restart keep the data.
	_, err = c.Exec(ctx, "INSERT INTO companies (name) VALUES ('Acme Heating')")
	require.NoError(t, err)
	require.NoError(t, s.Kill())
	require.NoError(t, s.Restart(ctx))
	c2, err := pgx.Connect(ctx, s.URL("ges"))
	require.NoError(t, err)
	defer c2.Close(ctx)
	require.NoError(t, c2.QueryRow(ctx, "SELECT count(*) FROM companies").Scan(&n))
	require.Equal(t, 1, n)
}
