package e2e_test

import (
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The README's least-privilege role, run verbatim (database name and password aside), is all
// the daemon needs.
func TestDaemonRunsAsTheReadmeRole(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	require.NoError(t, err)
	block := regexp.MustCompile("(?s)```sql\n(CREATE ROLE gessync.*?)```").FindSubmatch(readme)
	require.NotNil(t, block, "README has the role SQL")
	e := newEnv(t)
	sql := strings.ReplaceAll(string(block[1]), "PASSWORD '…'", "")
	sql = strings.ReplaceAll(sql, "ON DATABASE ges ", fmt.Sprintf("ON DATABASE %s ", e.dbName))
	var stmts []string
	for _, line := range strings.Split(sql, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "--") {
			stmts = append(stmts, line)
		}
	}
	e.exec(strings.Join(stmts, "\n"))
	// Roles are cluster-wide and the cluster outlives the test (go test -count=N runs it again).
	t.Cleanup(func() {
		e.stop()
		e.exec(`DROP OWNED BY gessync; DROP ROLE gessync`)
	})
	// GESSYNC_PUBLICATION is gessync, as the README's SQL creates it.
	e.gesURL = strings.Replace(e.gesURL, "postgres@", "gessync@", 1)
	e.start()
	e.connect(1)
	e.exec(customerSQL)
	e.exec(invoiceSQL)
	e.caughtUp()
	b := e.business(0)
	require.Len(t, b.Contacts, 1)
	require.Len(t, b.SalesInvoices, 1)
}
