// Package state is gessync's own store in PostgreSQL: the replication checkpoint, the GES id ↔
// Sage id map with the hash of the last payload sent, each company's Sage connection (tokens
// encrypted at rest with AES-GCM when a key is configured, business, settings), the sync log that
// operators and engineers read, OAuth states, and per-company counters.
//
// By default it lives in schema "gessync" of the GES database; then every write here is WAL too,
// so the daemon writes the checkpoint only when it moved for a published change, never in reply
// to a keepalive.
package state

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/oauth2"

	"github.com/gessync/gessync/transform"
)

// Store is the state database. It is safe for concurrent use.
type Store struct {
	pool *pgxpool.Pool
	// batch carries the statements the pipeline runs for every change (the id map, create
	// attempts, the sync log's resolves, counters) in shared round trips (batch.go).
	batch  *batcher
	schema string
	qs     sync.Map // q's answers: statement → statement in schema
	aead   cipher.AEAD
	old    []cipher.AEAD // previous token keys: open only (tokenkeys.go)
}

// Config configures Open.
type Config struct {
	// URL is the state database; it may be the GES database.
	URL string
	// Schema holds gessync's tables, default "gessync".
	Schema string
	// TokenKey, when 32 bytes, encrypts tokens at rest with AES-256-GCM. Empty stores them as is
	// (the daemon warns).
	TokenKey []byte
	// PreviousTokenKeys are keys TokenKey replaced: tokens sealed with them still open, and Open
	// re-seals every stored token with TokenKey (key rotation, tokenkeys.go).
	PreviousTokenKeys [][]byte
	// MaxConns bounds the pool, default 10.
	MaxConns int32
}

var schemaRE = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// Open connects, creates the schema and applies migrations.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.Schema == "" {
		cfg.Schema = "gessync"
	}
	if !schemaRE.MatchString(cfg.Schema) {
		return nil, fmt.Errorf("state schema %q: use lower-case letters, digits and _", cfg.Schema)
	}
	pcfg, err := pgxpool.ParseConfig(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("state database URL: %w", err)
	}
	pcfg.MaxConns = cfg.MaxConns
	if pcfg.MaxConns == 0 {
		pcfg.MaxConns = 10
	}
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("opening state database: %w", err)
	}
	s := &Store{pool: pool, schema: cfg.Schema}
	if len(cfg.TokenKey) > 0 {
		block, err := aes.NewCipher(cfg.TokenKey)
		if err != nil {
			pool.Close()
			return nil, fmt.Errorf("token key: %w", err)
		}
		if s.aead, err = cipher.NewGCM(block); err != nil {
			pool.Close()
			return nil, fmt.Errorf("token key: %w", err)
		}
	}
	for _, k := range cfg.PreviousTokenKeys {
		a, err := newAEAD(k)
		if err != nil {
			pool.Close()
			return nil, fmt.Errorf("previous token key: %w", err)
		}
		s.old = append(s.old, a)
	}
	if err := s.migrate(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	if s.aead != nil {
		if _, err := s.ResealTokens(ctx); err != nil {
			pool.Close()
			return nil, err
		}
	}
	s.batch = newBatcher(pool)
	return s, nil
}

// Close answers the statements in flight, then releases the pool.
func (s *Store) Close() {
	s.batch.close()
	s.pool.Close()
}

// Pool exposes the connection pool (for health checks).
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// q returns sql with "@s." replaced by the schema. sql must be one of a bounded set (the
// package's constant statements), because answers are kept: building each anew was 4 % of the
// daemon's allocations under load.
func (s *Store) q(sql string) string {
	if v, ok := s.qs.Load(sql); ok {
		return v.(string)
	}
	out := strings.ReplaceAll(sql, "@s.", pgx.Identifier{s.schema}.Sanitize()+".")
	s.qs.Store(sql, out)
	return out
}

var migrations = []string{
	`CREATE TABLE @s.checkpoints (
		slot       text PRIMARY KEY,
		lsn        pg_lsn NOT NULL,
		updated_at timestamptz NOT NULL DEFAULT now()
	);
	CREATE TABLE @s.connections (
		company_id     bigint PRIMARY KEY,
		business_id    text NOT NULL DEFAULT '',
		business_name  text NOT NULL DEFAULT '',
		access_token   text NOT NULL DEFAULT '',
		refresh_token  text NOT NULL DEFAULT '',
		token_expiry   timestamptz,
		refresh_expiry timestamptz,
		settings       jsonb NOT NULL DEFAULT '{}',
		status         text NOT NULL DEFAULT 'connected',
		status_detail  text NOT NULL DEFAULT '',
		connected_at   timestamptz NOT NULL DEFAULT now(),
		updated_at     timestamptz NOT NULL DEFAULT now()
	);
	CREATE TABLE @s.id_map (
		ges_table    text   NOT NULL,
		ges_id       bigint NOT NULL,
		company_id   bigint NOT NULL,
		business_id  text   NOT NULL,
		sage_id      text   NOT NULL,
		contact_id   text   NOT NULL DEFAULT '',
		parent_id    bigint,
		payload_hash text   NOT NULL DEFAULT '',
		lsn          pg_lsn,
		updated_at   timestamptz NOT NULL DEFAULT now(),
		PRIMARY KEY (ges_table, ges_id)
	);
	CREATE INDEX id_map_company ON @s.id_map (company_id, ges_table);
	CREATE TABLE @s.sync_log (
		id           bigserial PRIMARY KEY,
		company_id   bigint NOT NULL,
		ges_table    text NOT NULL DEFAULT '',
		ges_id       bigint NOT NULL DEFAULT 0,
		lsn          pg_lsn,
		level        text NOT NULL,
		code         text NOT NULL DEFAULT '',
		message      text NOT NULL,
		sage_message text NOT NULL DEFAULT '',
		action       text NOT NULL DEFAULT '',
		created_at   timestamptz NOT NULL DEFAULT now(),
		resolved_at  timestamptz
	);
	CREATE INDEX sync_log_open ON @s.sync_log (company_id, ges_table, ges_id) WHERE resolved_at IS NULL;
	CREATE TABLE @s.oauth_states (
		state      text PRIMARY KEY,
		company_id bigint NOT NULL,
		created_at timestamptz NOT NULL DEFAULT now(),
		used_at    timestamptz
	);
	CREATE TABLE @s.company_stats (
		company_id   bigint PRIMARY KEY,
		synced       bigint NOT NULL DEFAULT 0,
		failed       bigint NOT NULL DEFAULT 0,
		skipped      bigint NOT NULL DEFAULT 0,
		last_sync_at timestamptz
	);`,
	// 2: backfills, resumable by their cursor.
	`CREATE TABLE @s.backfills (
		company_id  bigint PRIMARY KEY,
		since       date,
		status      text NOT NULL DEFAULT 'running',
		total       bigint NOT NULL DEFAULT 0,
		done        bigint NOT NULL DEFAULT 0,
		cur_table   text NOT NULL DEFAULT 'customers',
		cur_id      bigint NOT NULL DEFAULT 0,
		error       text NOT NULL DEFAULT '',
		started_at  timestamptz NOT NULL DEFAULT now(),
		updated_at  timestamptz NOT NULL DEFAULT now(),
		finished_at timestamptz
	);`,
	// 3: the backlog of companies whose Sage refuses for long: one entry per record.
	`CREATE TABLE @s.backlog (
		ges_table  text   NOT NULL,
		ges_id     bigint NOT NULL,
		company_id bigint NOT NULL,
		deleted    boolean NOT NULL DEFAULT false,
		seq        bigserial,
		queued_at  timestamptz NOT NULL DEFAULT now(),
		PRIMARY KEY (ges_table, ges_id)
	);
	CREATE INDEX backlog_company ON @s.backlog (company_id, seq);`,
	// 4: a record's children (an invoice's payments) and links by Sage id, without scans.
	`CREATE INDEX id_map_parent ON @s.id_map (ges_table, parent_id);
	CREATE INDEX id_map_sage ON @s.id_map (ges_table, business_id, sage_id);`,
	// 5: creates gessync has sent (or was about to send) to Sage and not yet seen acknowledged.
	`CREATE TABLE @s.create_attempts (
		ges_table    text        NOT NULL,
		ges_id       bigint      NOT NULL,
		business_id  text        NOT NULL,
		attempted_at timestamptz NOT NULL DEFAULT now(),
		PRIMARY KEY (ges_table, ges_id, business_id)
	);
	-- connected_at was kept from the first connect, through reconnects and changes of business:
	-- the pipeline now trusts it to say which records may already be in Sage, so restart it.
	UPDATE @s.connections SET connected_at = now();`,
	// 6: every synced change resolves its record's open errors and reads those waiting for it.
	// sync_log_open leads with company_id and holds every info and warning ever logged (they
	// are never resolved), so those statements scanned the whole log: 33 ms a change with
	// 200,000 entries. These two hold only what they look up.
	`CREATE INDEX sync_log_open_record ON @s.sync_log (ges_table, ges_id) WHERE resolved_at IS NULL;
	CREATE INDEX sync_log_open_error_code ON @s.sync_log (company_id, code) WHERE resolved_at IS NULL AND level = 'error';`,
	// 7: the parents (customers of an invoice, invoices of a payment) a create was attempted
	// for: when the record has moved since, a create Sage committed sits with one of them
	// (pipeline's matchInvoice, matchPayment).
	`ALTER TABLE @s.create_attempts ADD COLUMN parent_ids bigint[] NOT NULL DEFAULT '{}';`,
	// 8: the Sage record a create replaces (ForgetSageRecord): its idempotency_id must differ.
	`ALTER TABLE @s.create_attempts ADD COLUMN replaces text NOT NULL DEFAULT '';`,
	// 9: only the primary key leads with ges_table, so that a lookup of one record by (ges_table,
	// ges_id), the most frequent statement, can take no other index. With statistics older than
	// the table's growth, PostgreSQL took these two for a (ges_table) prefix and read every
	// mapping of the table, or of the business, on each create.
	`DROP INDEX @s.id_map_parent;
	CREATE INDEX id_map_parent ON @s.id_map (parent_id, ges_table);
	DROP INDEX @s.id_map_sage;
	CREATE INDEX id_map_sage ON @s.id_map (sage_id, business_id, ges_table);`,
}

func (s *Store) migrate(ctx context.Context) error {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("state migrations: %w", err)
	}
	defer conn.Release()
	// One migrator at a time, whichever instance starts first.
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock(hashtext($1))`, "gessync-migrate:"+s.schema); err != nil {
		return fmt.Errorf("state migrations: %w", err)
	}
	defer conn.Exec(context.Background(), `SELECT pg_advisory_unlock(hashtext($1))`, "gessync-migrate:"+s.schema) //nolint:errcheck
	if _, err := conn.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS `+pgx.Identifier{s.schema}.Sanitize()); err != nil {
		return fmt.Errorf("creating state schema %s: %w", s.schema, err)
	}
	if _, err := conn.Exec(ctx, s.q(`CREATE TABLE IF NOT EXISTS @s.schema_version (version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`)); err != nil {
		return fmt.Errorf("state migrations: %w", err)
	}
	var have int
	if err := conn.QueryRow(ctx, s.q(`SELECT coalesce(max(version), 0) FROM @s.schema_version`)).Scan(&have); err != nil {
		return fmt.Errorf("state migrations: %w", err)
	}
	if have > len(migrations) {
		return fmt.Errorf("state schema %s is at version %d, newer than this gessync (%d): upgrade gessync", s.schema, have, len(migrations))
	}
	for v := have + 1; v <= len(migrations); v++ {
		tx, err := conn.Begin(ctx)
		if err != nil {
			return fmt.Errorf("state migration %d: %w", v, err)
		}
		if _, err := tx.Exec(ctx, s.q(migrations[v-1])); err != nil {
			tx.Rollback(ctx) //nolint:errcheck
			return fmt.Errorf("state migration %d: %w", v, err)
		}
		if _, err := tx.Exec(ctx, s.q(`INSERT INTO @s.schema_version (version) VALUES ($1)`), v); err != nil {
			tx.Rollback(ctx) //nolint:errcheck
			return fmt.Errorf("state migration %d: %w", v, err)
		}
		if err := tx.Commit(ctx); err != nil {
			return fmt.Errorf("state migration %d: %w", v, err)
		}
	}
	return nil
}

// Checkpoint returns the stored checkpoint of slot, and false when none is stored.
func (s *Store) Checkpoint(ctx context.Context, slot string) (pglogrepl.LSN, bool, error) {
	var lsn pglogrepl.LSN
	err := s.pool.QueryRow(ctx, s.q(`SELECT lsn FROM @s.checkpoints WHERE slot = $1`), slot).Scan(&lsn)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("reading checkpoint of slot %s: %w", slot, err)
	}
	return lsn, true, nil
}

// SaveCheckpoint stores lsn for slot. It never moves a stored checkpoint backwards.
func (s *Store) SaveCheckpoint(ctx context.Context, slot string, lsn pglogrepl.LSN) error {
	_, err := s.pool.Exec(ctx, s.q(`INSERT INTO @s.checkpoints (slot, lsn) VALUES ($1, $2)
		ON CONFLICT (slot) DO UPDATE SET lsn = greatest(@s.checkpoints.lsn, excluded.lsn), updated_at = now()`), slot, lsn)
	if err != nil {
		return fmt.Errorf("saving checkpoint %s of slot %s: %w", lsn, slot, err)
	}
	return nil
}

// Settings are one company's sync choices and the Sage ids chosen or looked up at connect.
type Settings struct {
	SyncCustomers bool `json:"sync_customers"`
	SyncInvoices  bool `json:"sync_invoices"`
	SyncPayments  bool `json:"sync_payments"`
	// BankAccountName and similar display names are for the settings page.
	BankAccountName string `json:"bank_account_name,omitempty"`
	// SalesLedgerName is the display name of Sage.SalesLedgerAccountID, when chosen by a person.
	SalesLedgerName string             `json:"sales_ledger_name,omitempty"`
	Sage            transform.Settings `json:"sage"`
}

// DefaultSettings syncs everything.
func DefaultSettings() Settings {
	return Settings{SyncCustomers: true, SyncInvoices: true, SyncPayments: true}
}

// Connection is one company's Sage connection.
type Connection struct {
	CompanyID     int64
	BusinessID    string
	BusinessName  string
	Token         *oauth2.Token
	RefreshExpiry time.Time
	Settings      Settings
	// Status is "connected", or "lost" when the tokens stopped working (StatusDetail says why).
	Status       string
	StatusDetail string
	// ConnectedAt is when the company last began connecting (an OAuth connect, status
	// "connecting") or moved to another business, by the state database's clock: GES records
	// created before it may already be in Sage. Settings and token saves leave it.
	ConnectedAt time.Time
}

// ErrNotFound means the record asked for is not stored.
var ErrNotFound = errors.New("not found")

func (s *Store) seal(plain string) (string, error) {
	if s.aead == nil || plain == "" {
		return plain, nil
	}
	nonce := make([]byte, s.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return "", fmt.Errorf("sealing token: %w", err)
	}
	return "v1:" + base64.StdEncoding.EncodeToString(s.aead.Seal(nonce, nonce, []byte(plain), nil)), nil
}

func (s *Store) open(sealed string) (string, error) {
	if !strings.HasPrefix(sealed, "v1:") {
		return sealed, nil
	}
	if s.aead == nil {
		return "", errors.New("tokens are encrypted but no token key is configured (GESSYNC_TOKEN_KEY)")
	}
	if len(s.old) > 0 {
		return s.openAny(sealed)
	}
	raw, err := base64.StdEncoding.DecodeString(sealed[3:])
	if err != nil || len(raw) < s.aead.NonceSize() {
		return "", errors.New("stored token is corrupt")
	}
	plain, err := s.aead.Open(nil, raw[:s.aead.NonceSize()], raw[s.aead.NonceSize():], nil)
	if err != nil {
		return "", errors.New("stored token does not open with the configured token key")
	}
	return string(plain), nil
}

const connCols = `company_id, business_id, business_name, access_token, refresh_token, token_expiry, refresh_expiry, settings, status, status_detail, connected_at`

func (s *Store) scanConnection(row pgx.Row) (Connection, error) {
	var c Connection
	var access, refresh string
	var expiry, rexp *time.Time
	var settings []byte
	if err := row.Scan(&c.CompanyID, &c.BusinessID, &c.BusinessName, &access, &refresh, &expiry, &rexp, &settings, &c.Status, &c.StatusDetail, &c.ConnectedAt); err != nil {
		return c, err
	}
	a, err := s.open(access)
	if err != nil {
		return c, fmt.Errorf("company %d: %w", c.CompanyID, err)
	}
	r, err := s.open(refresh)
	if err != nil {
		return c, fmt.Errorf("company %d: %w", c.CompanyID, err)
	}
	c.Token = &oauth2.Token{AccessToken: a, RefreshToken: r, TokenType: "Bearer"}
	if expiry != nil {
		c.Token.Expiry = expiry.UTC()
	}
	if rexp != nil {
		c.RefreshExpiry = rexp.UTC()
	}
	c.Settings = DefaultSettings()
	if err := json.Unmarshal(settings, &c.Settings); err != nil {
		return c, fmt.Errorf("company %d: settings: %w", c.CompanyID, err)
	}
	c.ConnectedAt = c.ConnectedAt.UTC()
	return c, nil
}

// Connection returns company's connection, or ErrNotFound.
func (s *Store) Connection(ctx context.Context, companyID int64) (Connection, error) {
	c, err := s.scanConnection(s.pool.QueryRow(ctx, s.q(`SELECT `+connCols+` FROM @s.connections WHERE company_id = $1`), companyID))
	if errors.Is(err, pgx.ErrNoRows) {
		return c, fmt.Errorf("company %d: %w", companyID, ErrNotFound)
	}
	if err != nil {
		return c, fmt.Errorf("reading connection of company %d: %w", companyID, err)
	}
	return c, nil
}

// Connections returns every stored connection, by company id.
func (s *Store) Connections(ctx context.Context) ([]Connection, error) {
	rows, err := s.pool.Query(ctx, s.q(`SELECT `+connCols+` FROM @s.connections ORDER BY company_id`))
	if err != nil {
		return nil, fmt.Errorf("reading connections: %w", err)
	}
	defer rows.Close()
	var out []Connection
	for rows.Next() {
		c, err := s.scanConnection(rows)
		if err != nil {
			return nil, fmt.Errorf("reading connections: %w", err)
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// SaveConnection inserts or replaces company's connection.
func (s *Store) SaveConnection(ctx context.Context, c Connection) error {
	access, refresh := "", ""
	var expiry *time.Time
	if c.Token != nil {
		var err error
		if access, err = s.seal(c.Token.AccessToken); err != nil {
			return err
		}
		if refresh, err = s.seal(c.Token.RefreshToken); err != nil {
			return err
		}
		if !c.Token.Expiry.IsZero() {
			e := c.Token.Expiry.UTC()
			expiry = &e
		}
	}
	var rexp *time.Time
	if !c.RefreshExpiry.IsZero() {
		r := c.RefreshExpiry.UTC()
		rexp = &r
	}
	settings, err := json.Marshal(c.Settings)
	if err != nil {
		return fmt.Errorf("company %d: settings: %w", c.CompanyID, err)
	}
	if c.Status == "" {
		c.Status = "connected"
	}
	_, err = s.pool.Exec(ctx, s.q(`INSERT INTO @s.connections (company_id, business_id, business_name, access_token, refresh_token, token_expiry, refresh_expiry, settings, status, status_detail, connected_at, updated_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now(), now())
		ON CONFLICT (company_id) DO UPDATE SET business_id = excluded.business_id, business_name = excluded.business_name,
			access_token = excluded.access_token, refresh_token = excluded.refresh_token, token_expiry = excluded.token_expiry,
			refresh_expiry = excluded.refresh_expiry, settings = excluded.settings, status = excluded.status,
			status_detail = excluded.status_detail, updated_at = now(),
			connected_at = CASE WHEN excluded.status = 'connecting' OR @s.connections.business_id <> excluded.business_id
				THEN now() ELSE @s.connections.connected_at END`),
		c.CompanyID, c.BusinessID, c.BusinessName, access, refresh, expiry, rexp, settings, c.Status, c.StatusDetail)
	if err != nil {
		return fmt.Errorf("saving connection of company %d: %w", c.CompanyID, err)
	}
	return nil
}

// SaveToken stores a rotated token pair for company (sage.TokenStore). It is durable when it
// returns nil. Sage's refresh_token_expires_in, when present in tok.Extra, updates the refresh expiry.
func (s *Store) SaveToken(ctx context.Context, companyID int64, tok *oauth2.Token) error {
	access, err := s.seal(tok.AccessToken)
	if err != nil {
		return err
	}
	refresh, err := s.seal(tok.RefreshToken)
	if err != nil {
		return err
	}
	var rexp *time.Time
	if v := tok.Extra("refresh_token_expires_in"); v != nil {
		var secs float64
		switch n := v.(type) {
		case float64:
			secs = n
		case json.Number:
			secs, _ = n.Float64()
		}
		if secs > 0 {
			t := time.Now().UTC().Add(time.Duration(secs) * time.Second)
			rexp = &t
		}
	}
	tag, err := s.pool.Exec(ctx, s.q(`UPDATE @s.connections SET access_token = $2, refresh_token = $3, token_expiry = $4,
		refresh_expiry = coalesce($5, refresh_expiry), status = 'connected', status_detail = '', updated_at = now() WHERE company_id = $1`),
		companyID, access, refresh, tok.Expiry.UTC(), rexp)
	if err != nil {
		return fmt.Errorf("saving token of company %d: %w", companyID, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("saving token of company %d: %w", companyID, ErrNotFound)
	}
	return nil
}

// SetStatus records a connection's status ("connected", "lost") and why.
func (s *Store) SetStatus(ctx context.Context, companyID int64, status, detail string) error {
	_, err := s.pool.Exec(ctx, s.q(`UPDATE @s.connections SET status = $2, status_detail = $3, updated_at = now() WHERE company_id = $1`), companyID, status, detail)
	if err != nil {
		return fmt.Errorf("setting status of company %d: %w", companyID, err)
	}
	return nil
}

// DeleteConnection forgets company's connection (its id map stays, for a later reconnect to the same business).
func (s *Store) DeleteConnection(ctx context.Context, companyID int64) error {
	_, err := s.pool.Exec(ctx, s.q(`DELETE FROM @s.connections WHERE company_id = $1`), companyID)
	if err != nil {
		return fmt.Errorf("deleting connection of company %d: %w", companyID, err)
	}
	return nil
}
