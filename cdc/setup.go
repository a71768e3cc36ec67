package cdc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Config configures the replication side. Zero values take the documented defaults.
type Config struct {
	// URL is the GES database (a normal connection URL; the stream adds replication=database).
	URL string
	// Slot is the logical replication slot, default "gessync". Names match [a-z_][a-z0-9_]*.
	Slot string
	// Publication is the publication of customers, invoices and payments, default "gessync".
	Publication string
	// NoCreate stops Prepare from creating a missing publication or slot (it fails instead).
	NoCreate bool
	// StatusInterval is how often a standby status update is sent, default 5 s; it must be well
	// under the server's wal_sender_timeout (60 s by default).
	StatusInterval time.Duration
	// Logger receives the stream's logs; default discards.
	Logger *slog.Logger
	// Shard, when set, limits the publication to this instance's share of the companies
	// (shard.go); the zero value streams every company.
	Shard Shard
}

func (c Config) withDefaults() Config {
	if c.Slot == "" {
		c.Slot = "gessync"
	}
	if c.Publication == "" {
		c.Publication = "gessync"
	}
	if c.StatusInterval <= 0 {
		c.StatusInterval = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

var identRE = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// Validate checks the slot and publication names (they are used in replication commands that
// cannot quote identifiers).
func (c Config) Validate() error {
	c = c.withDefaults()
	if c.URL == "" {
		return errors.New("GES database URL is empty")
	}
	if !identRE.MatchString(c.Slot) {
		return fmt.Errorf("slot name %q: use lower-case letters, digits and _ (at most 63)", c.Slot)
	}
	if !identRE.MatchString(c.Publication) {
		return fmt.Errorf("publication name %q: use lower-case letters, digits and _ (at most 63)", c.Publication)
	}
	if err := c.Shard.validate(); err != nil {
		return err
	}
	return nil
}

// RequiredColumns lists, per GES table, the columns gessync reads and their PostgreSQL types
// (as format_type names them). GES may add columns; it may not drop or retype these.
var RequiredColumns = map[string]map[string]string{
	"customers": {
		"id": "bigint", "company_id": "bigint", "account_ref": "text", "customer_type": "text",
		"title": "text", "first_name": "text", "last_name": "text", "company_name": "text",
		"email": "text", "phone": "text", "mobile": "text", "address_line1": "text",
		"address_line2": "text", "town": "text", "county": "text", "postcode": "text",
		"country_code": "character", "vat_number": "text", "cis_registered": "boolean",
		"cis_rate": "numeric", "payment_terms_days": "integer", "notes": "text",
		"archived": "boolean", "updated_at": "timestamp with time zone",
	},
	"invoices": {
		"id": "bigint", "company_id": "bigint", "customer_id": "bigint", "invoice_number": "text",
		"status": "text", "issue_date": "date", "due_date": "date", "job_reference": "text",
		"site_address": "text", "vat_reverse_charge": "boolean", "line_items": "jsonb",
		"subtotal": "numeric", "vat_total": "numeric", "total": "numeric",
		"cis_deduction": "numeric", "notes": "text", "void_reason": "text",
		"updated_at": "timestamp with time zone",
	},
	"payments": {
		"id": "bigint", "company_id": "bigint", "invoice_id": "bigint", "amount": "numeric",
		"method": "text", "paid_on": "date", "reference": "text",
		"updated_at": "timestamp with time zone",
	},
}

// SetupError is a start-up check that failed: what is wrong with which table, and what to do.
type SetupError struct {
	Table  string
	Reason string
	Action string
}

func (e *SetupError) Error() string {
	s := e.Reason
	if e.Table != "" {
		s = e.Table + ": " + s
	}
	if e.Action != "" {
		s += " (" + e.Action + ")"
	}
	return s
}

// SlotInfo describes the replication slot after Prepare.
type SlotInfo struct {
	Name           string
	ConfirmedFlush pglogrepl.LSN
	Created        bool
}

// Prepare checks the GES database and sets up replication: every required column exists with its
// type, the connecting role can SELECT the three tables, the publication exists (created when
// missing unless NoCreate) and publishes inserts, updates and deletes of all three tables, and
// the logical slot exists with the pgoutput plugin (created with pg_create_logical_replication_slot
// when missing). Each failure is a *SetupError naming the table.
func Prepare(ctx context.Context, cfg Config) (SlotInfo, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return SlotInfo{}, err
	}
	conn, err := pgx.Connect(ctx, cfg.URL)
	if err != nil {
		return SlotInfo{}, fmt.Errorf("connecting to the GES database: %w", err)
	}
	defer conn.Close(ctx)
	if err := checkColumns(ctx, conn); err != nil {
		return SlotInfo{}, err
	}
	if err := prepareShard(ctx, conn, cfg); err != nil {
		return SlotInfo{}, err
	}
	if err := checkPublication(ctx, conn, cfg); err != nil {
		return SlotInfo{}, err
	}
	return ensureSlot(ctx, conn, cfg)
}

func checkColumns(ctx context.Context, conn *pgx.Conn) error {
	for _, table := range Tables {
		var exists, canSelect bool
		if err := conn.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, table).Scan(&exists); err != nil {
			return fmt.Errorf("looking for table %s: %w", table, err)
		}
		if !exists {
			return &SetupError{Table: table, Reason: "table not found in the GES database", Action: "check GES_DATABASE_URL points at the GES database"}
		}
		if err := conn.QueryRow(ctx, `SELECT has_table_privilege(current_user, $1, 'SELECT')`, table).Scan(&canSelect); err != nil {
			return fmt.Errorf("checking SELECT on %s: %w", table, err)
		}
		if !canSelect {
			return &SetupError{Table: table, Reason: "the GES role cannot SELECT it", Action: fmt.Sprintf("GRANT SELECT ON %s TO <gessync role>", table)}
		}
		// pg_catalog, not information_schema: the latter hides columns the role lacks rights on.
		rows, err := conn.Query(ctx, `SELECT a.attname, format_type(a.atttypid, NULL) FROM pg_attribute a
			WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped`, table)
		if err != nil {
			return fmt.Errorf("reading the columns of %s: %w", table, err)
		}
		have := map[string]string{}
		for rows.Next() {
			var name, typ string
			if err := rows.Scan(&name, &typ); err != nil {
				return fmt.Errorf("reading the columns of %s: %w", table, err)
			}
			have[name] = typ
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("reading the columns of %s: %w", table, err)
		}
		var problems []string
		for col, want := range RequiredColumns[table] {
			got, ok := have[col]
			switch {
			case !ok:
				problems = append(problems, fmt.Sprintf("column %s is missing (want %s)", col, want))
			case got != want:
				problems = append(problems, fmt.Sprintf("column %s is %s, want %s", col, got, want))
			}
		}
		if len(problems) > 0 {
			sort.Strings(problems)
			return &SetupError{Table: table, Reason: strings.Join(problems, "; "), Action: "gessync follows schema.sql; restore the column or upgrade gessync"}
		}
	}
	return nil
}

func checkPublication(ctx context.Context, conn *pgx.Conn, cfg Config) error {
	var ins, upd, del bool
	err := conn.QueryRow(ctx, `SELECT pubinsert, pubupdate, pubdelete FROM pg_publication WHERE pubname = $1`, cfg.Publication).Scan(&ins, &upd, &del)
	if errors.Is(err, pgx.ErrNoRows) {
		create := fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s", cfg.Publication, strings.Join(Tables, ", "))
		if cfg.NoCreate {
			return &SetupError{Reason: fmt.Sprintf("publication %s does not exist", cfg.Publication), Action: "run: " + create}
		}
		if _, err := conn.Exec(ctx, create); err != nil {
			return &SetupError{Reason: fmt.Sprintf("creating publication %s: %v", cfg.Publication, err), Action: "ask the DBA to run: " + create}
		}
		cfg.Logger.Info("created publication", "publication", cfg.Publication)
		ins, upd, del = true, true, true
	} else if err != nil {
		return fmt.Errorf("reading publication %s: %w", cfg.Publication, err)
	}
	if !ins || !upd || !del {
		return &SetupError{Reason: fmt.Sprintf("publication %s must publish insert, update and delete", cfg.Publication),
			Action: fmt.Sprintf("ALTER PUBLICATION %s SET (publish = 'insert, update, delete, truncate')", cfg.Publication)}
	}
	// Compare by the tables themselves (as the search path resolves them), not by
	// current_schema(): a role named like gessync's state schema has that schema first.
	rows, err := conn.Query(ctx, `SELECT pt.tablename FROM pg_publication_tables pt
		JOIN (SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE c.oid = ANY (ARRAY[to_regclass('customers'), to_regclass('invoices'), to_regclass('payments')])) t ON t.nspname = pt.schemaname AND t.relname = pt.tablename
		WHERE pt.pubname = $1`, cfg.Publication)
	if err != nil {
		return fmt.Errorf("reading publication %s: %w", cfg.Publication, err)
	}
	published, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("reading publication %s: %w", cfg.Publication, err)
	}
	for _, t := range Tables {
		found := false
		for _, p := range published {
			found = found || p == t
		}
		if !found {
			return &SetupError{Table: t, Reason: fmt.Sprintf("not in publication %s", cfg.Publication),
				Action: fmt.Sprintf("ALTER PUBLICATION %s ADD TABLE %s", cfg.Publication, t)}
		}
	}
	return nil
}

func ensureSlot(ctx context.Context, conn *pgx.Conn, cfg Config) (SlotInfo, error) {
	info := SlotInfo{Name: cfg.Slot}
	var plugin, db string
	var flush *pglogrepl.LSN
	err := conn.QueryRow(ctx, `SELECT coalesce(plugin, ''), coalesce(database, ''), confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = $1`, cfg.Slot).Scan(&plugin, &db, &flush)
	if errors.Is(err, pgx.ErrNoRows) {
		if cfg.NoCreate {
			return info, &SetupError{Reason: fmt.Sprintf("replication slot %s does not exist", cfg.Slot),
				Action: fmt.Sprintf("SELECT pg_create_logical_replication_slot('%s', 'pgoutput')", cfg.Slot)}
		}
		var lsn pglogrepl.LSN
		if err := conn.QueryRow(ctx, `SELECT lsn FROM pg_create_logical_replication_slot($1, 'pgoutput')`, cfg.Slot).Scan(&lsn); err != nil {
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) {
				return info, &SetupError{Reason: fmt.Sprintf("creating replication slot %s: %s", cfg.Slot, pgErr.Message), Action: "the GES role needs the REPLICATION attribute, and the server wal_level=logical and a free slot"}
			}
			return info, fmt.Errorf("creating replication slot %s: %w", cfg.Slot, err)
		}
		cfg.Logger.Info("created replication slot", "slot", cfg.Slot, "lsn", lsn)
		info.ConfirmedFlush, info.Created = lsn, true
		return info, nil
	}
	if err != nil {
		return info, fmt.Errorf("reading replication slot %s: %w", cfg.Slot, err)
	}
	if plugin != "pgoutput" {
		return info, &SetupError{Reason: fmt.Sprintf("replication slot %s uses plugin %q, not pgoutput", cfg.Slot, plugin), Action: "drop it or choose another slot name"}
	}
	var current string
	if err := conn.QueryRow(ctx, `SELECT current_database()`).Scan(&current); err != nil {
		return info, fmt.Errorf("reading current database: %w", err)
	}
	if db != current {
		return info, &SetupError{Reason: fmt.Sprintf("replication slot %s belongs to database %s, not %s", cfg.Slot, db, current), Action: "choose another slot name"}
	}
	if flush != nil {
		info.ConfirmedFlush = *flush
	}
	return info, nil
}
