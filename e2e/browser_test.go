package e2e_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"
)

// chromium finds Debian's chromium (scripts/ensure-chromium installs it). Without one the test
// skips, except under CI=true, where a missing browser fails the run.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("chromium not found: scripts/ensure-chromium installs Debian's chromium package")
	}
	t.Skip("chromium not found: run scripts/ensure-chromium (apt-get install -y chromium)")
	return ""
}

// browser starts headless chromium with a fresh profile; the context ends with the test.
func browser(t *testing.T) context.Context {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromium(t)),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("no-default-browser-check", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	require.NoError(t, chromedp.Do(ctx), "starting chromium")
	return ctx
}

// do runs browser steps with a deadline.
func do(t *testing.T, ctx context.Context, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	require.NoError(t, chromedp.Do(c, steps...))
}

// text returns the text of the element with id.
func text(t *testing.T, ctx context.Context, id string) string {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	s, err := chromedp.Run(c, chromedp.Text(chromedp.ID(id)))
	require.NoError(t, err)
	return s
}

// page loads url and returns the outer HTML of the element with id.
func page(ctx context.Context, url, id string) (string, error) {
	c, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := chromedp.Do(c, chromedp.Navigate(url)); err != nil {
		return "", err
	}
	return chromedp.Run(c, chromedp.OuterHTML(chromedp.ID(id)))
}

func TestBrowserConnectSeeAnErrorFixItInGESAndWatchItClear(t *testing.T) {
	ctx := browser(t)
	e := newEnv(t)
	e.webStart("GESSYNC_ADMIN_TOKEN="+webAdminToken, "GESSYNC_GES_URL_TEMPLATE=https://ges.example/{table}/{id}")
	base := e.base()

	// Signing in: the page sends the browser to the form; the token opens a session.
	do(t, ctx,
		chromedp.Navigate(base+"/companies/1"),
		chromedp.WaitVisible(chromedp.ID("token")),
		chromedp.SendKeys(chromedp.ID("token"), webAdminToken),
		chromedp.Click(chromedp.ID("signin")),
		chromedp.WaitVisible(chromedp.ID("connection")),
	)
	title, err := chromedp.Run(ctx, chromedp.Title())
	require.NoError(t, err)
	require.Equal(t, "gessync: company 1", title)

	// Connect against the sandbox: Sage's authorize page approves at once and comes back.
	do(t, ctx, chromedp.Click(chromedp.ID("connect")), chromedp.WaitVisible(chromedp.ID("connected")))
	require.Contains(t, text(t, ctx, "connected"), "Sandbox Business")
	do(t, ctx, chromedp.Click(chromedp.CSS(`a[href="/companies/1"]`)), chromedp.WaitVisible(chromedp.ID("settings")))
	require.Equal(t, "connected", text(t, ctx, "state"))

	// A customer with no name cannot reach Sage: the page says so, with the record linked into
	// GES, what to do, and Retry and Resync.
	e.exec(`INSERT INTO customers (id, company_id, email) VALUES (12, 1, 'no.name@example.co.uk')`)
	var open string
	e.eventually(30*time.Second, "the error shows on the company page", func() bool {
		var err error
		open, err = page(ctx, base+"/companies/1", "open")
		return err == nil && strings.Contains(open, `data-record="customers/12"`)
	})
	require.Contains(t, open, `href="https://ges.example/customers/12"`)
	require.Contains(t, open, "neither a name nor a company name")
	require.Contains(t, open, "Add a name or company name to this customer in GES")
	require.Contains(t, open, `class="retry"`)
	require.Contains(t, open, `class="resync"`)

	// Retry re-reads the row: still no name, so the entry stays, and the page says it queued.
	do(t, ctx, chromedp.Click(chromedp.CSS(`tr[data-record="customers/12"] button.retry`)), chromedp.WaitVisible(chromedp.ID("done")))
	require.Contains(t, text(t, ctx, "done"), "Queued")

	// Invoices without customers is refused in words on the page.
	do(t, ctx, chromedp.Click(chromedp.ID("sync_customers")), chromedp.Click(chromedp.ID("save")), chromedp.WaitVisible(chromedp.ID("problem")))
	require.Contains(t, text(t, ctx, "problem"), "syncing invoices needs syncing customers")

	// Fix the row in GES: the customer syncs and the entry clears by itself.
	e.exec(`UPDATE customers SET first_name = 'Priya', last_name = 'Shah', updated_at = now() WHERE id = 12`)
	e.eventually(30*time.Second, "the entry clears", func() bool {
		open, err := page(ctx, base+"/companies/1", "open")
		return err == nil && strings.Contains(open, `id="no-open"`) && !strings.Contains(open, "customers/12")
	})
	b := e.business(0)
	require.Len(t, b.Contacts, 1)
	require.Equal(t, "Priya Shah", b.Contacts[0].Name)
	log, err := page(ctx, base+"/companies/1", "log")
	require.NoError(t, err)
	require.Contains(t, log, "neither a name nor a company name", "the history keeps the resolved entry")

	// The overview lists the company with nothing left to do.
	overview, err := page(ctx, base+"/", "companies")
	require.NoError(t, err)
	require.Contains(t, overview, fmt.Sprintf(`data-company="%d"`, 1))
	require.Contains(t, overview, "connected")
}
