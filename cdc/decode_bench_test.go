package cdc_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/gessync/gessync/cdc"
)

// pgoutput protocol 1 messages built by hand, as the walsender sends them, so the decoder's own
// cost can be measured without PostgreSQL.

type msgBuf []byte

func (b msgBuf) u8(v byte) msgBuf    { return append(b, v) }
func (b msgBuf) u16(v uint16) msgBuf { return binary.BigEndian.AppendUint16(b, v) }
func (b msgBuf) u32(v uint32) msgBuf { return binary.BigEndian.AppendUint32(b, v) }
func (b msgBuf) u64(v uint64) msgBuf { return binary.BigEndian.AppendUint64(b, v) }
func (b msgBuf) str(s string) msgBuf { return append(append(b, s...), 0) }

// benchCustomerColumns is the GES customers table, in order, with a realistic row.
var benchCustomerColumns = []struct{ name, value string }{
	{"id", "123456"}, {"company_id", "17"}, {"account_ref", "SMITH01"}, {"customer_type", "domestic"},
	{"title", "Mrs"}, {"first_name", "Jane"}, {"last_name", "Smith"}, {"company_name", ""},
	{"email", "jane.smith@example.co.uk"}, {"phone", "01632 960123"}, {"mobile", "07700 900123"},
	{"address_line1", "12 Acacia Avenue"}, {"address_line2", "Flat 2"}, {"town", "Leeds"},
	{"county", "West Yorkshire"}, {"postcode", "LS1 4AB"}, {"country_code", "GB"}, {"vat_number", ""},
	{"cis_registered", "f"}, {"cis_rate", ""}, {"payment_terms_days", "30"},
	{"notes", "Side gate code 1234. Dog friendly."}, {"archived", "f"},
	{"created_at", "2026-01-02 08:00:00+00"}, {"updated_at", "2026-11-29 13:56:32.123456+00"},
}

func benchRelation(relID uint32) []byte {
	b := msgBuf{}.u8('R').u32(relID).str("public").str("customers").u8('d').u16(uint16(len(benchCustomerColumns)))
	for i, c := range benchCustomerColumns {
		flags := byte(0)
		if i == 0 {
			flags = 1
		}
		b = b.u8(flags).str(c.name).u32(25).u32(0xFFFFFFFF)
	}
	return b
}

func benchInsert(relID uint32) []byte {
	b := msgBuf{}.u8('I').u32(relID).u8('N').u16(uint16(len(benchCustomerColumns)))
	for _, c := range benchCustomerColumns {
		if c.value == "" {
			b = b.u8('n')
			continue
		}
		b = b.u8('t').u32(uint32(len(c.value)))
		b = append(b, c.value...)
	}
	return b
}

func benchBegin(lsn uint64) []byte {
	return msgBuf{}.u8('B').u64(lsn).u64(uint64(time.Now().UnixMicro() - 946684800000000)).u32(1234)
}

func benchCommit(lsn uint64) []byte {
	return msgBuf{}.u8('C').u8(0).u64(lsn).u64(lsn + 48).u64(uint64(time.Now().UnixMicro() - 946684800000000))
}

// BenchmarkDecode measures cdc.Decoder on one customers insert (25 columns, the GES schema), the
// message that dominates a large load. It excludes the network and pgconn's framing: see
// BENCHMARKS.md for the decoder fed by a real slot.
func BenchmarkDecode(b *testing.B) {
	for _, perTxn := range []int{1, 100} {
		b.Run(fmt.Sprintf("customers_insert/rows_per_txn=%d", perTxn), func(b *testing.B) {
			d := cdc.NewDecoder(cdc.Tables...)
			emit := func(cdc.Event) error { return nil }
			if err := d.Decode(benchRelation(16400), 0, emit); err != nil {
				b.Fatal(err)
			}
			ins, begin, commit := benchInsert(16400), benchBegin(1<<32), benchCommit(1<<32)
			b.SetBytes(int64(len(ins)))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if i%perTxn == 0 {
					if err := d.Decode(begin, 0, emit); err != nil {
						b.Fatal(err)
					}
				}
				if err := d.Decode(ins, pglogrepl.LSN(i), emit); err != nil {
					b.Fatal(err)
				}
				if i%perTxn == perTxn-1 {
					if err := d.Decode(commit, 0, emit); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}

// referenceRow decodes a TupleData the way pglogrepl does, for checking the fast path.
func referenceRow(rel *pglogrepl.RelationMessage, t *pglogrepl.TupleData) cdc.Row {
	if t == nil {
		return nil
	}
	row := cdc.Row{}
	for i, c := range t.Columns {
		name := rel.Columns[i].Name
		switch c.DataType {
		case pglogrepl.TupleDataTypeNull:
			row[name] = cdc.Value{Null: true}
		case pglogrepl.TupleDataTypeToast:
			row[name] = cdc.Value{Unchanged: true}
		default:
			row[name] = cdc.Value{Text: string(c.Data)}
		}
	}
	return row
}

// TestDecodeRowMessagesMatchPglogrepl checks the decoder's own row parsing against pglogrepl's
// on inserts, updates with and without an old key, deletes, NULLs and unchanged TOAST values,
// and that truncated or malformed messages are refused, never half-read.
func TestDecodeRowMessagesMatchPglogrepl(t *testing.T) {
	const relID = 16400
	relMsg := benchRelation(relID)
	parsed, err := pglogrepl.Parse(relMsg)
	if err != nil {
		t.Fatal(err)
	}
	rel := parsed.(*pglogrepl.RelationMessage)
	tuple := func(vals ...string) msgBuf {
		b := msgBuf{}.u16(uint16(len(vals)))
		for _, v := range vals {
			switch v {
			case "<null>":
				b = b.u8('n')
			case "<toast>":
				b = b.u8('u')
			default:
				b = append(b.u8('t').u32(uint32(len(v))), v...)
			}
		}
		return b
	}
	full := func(id string) msgBuf {
		var vals []string
		for _, c := range benchCustomerColumns {
			v := c.value
			if c.name == "id" {
				v = id
			}
			if v == "" {
				v = "<null>"
			}
			if c.name == "notes" {
				v = "<toast>"
			}
			vals = append(vals, v)
		}
		return tuple(vals...)
	}
	key := tuple("77")
	msgs := map[string][]byte{
		"insert":           append(msgBuf{}.u8('I').u32(relID).u8('N'), full("77")...),
		"update":           append(msgBuf{}.u8('U').u32(relID).u8('N'), full("77")...),
		"update, key":      append(append(append(msgBuf{}.u8('U').u32(relID).u8('K'), key...), 'N'), full("78")...),
		"update, old row":  append(append(append(msgBuf{}.u8('U').u32(relID).u8('O'), full("77")...), 'N'), full("78")...),
		"delete":           append(msgBuf{}.u8('D').u32(relID).u8('K'), key...),
		"delete, old row":  append(msgBuf{}.u8('D').u32(relID).u8('O'), full("77")...),
		"fewer columns":    append(msgBuf{}.u8('I').u32(relID).u8('N'), tuple("1", "<null>", "")...),
		"empty text value": append(msgBuf{}.u8('I').u32(relID).u8('N'), tuple("1", "")...),
	}
	for name, msg := range msgs {
		t.Run(name, func(t *testing.T) {
			d := cdc.NewDecoder()
			var got []cdc.Event
			emit := func(ev cdc.Event) error { got = append(got, ev); return nil }
			for _, m := range [][]byte{relMsg, benchBegin(1 << 32), msg} {
				if err := d.Decode(m, 0, emit); err != nil {
					t.Fatal(err)
				}
			}
			if len(got) != 1 {
				t.Fatalf("got %d events", len(got))
			}
			want, err := pglogrepl.Parse(msg)
			if err != nil {
				t.Fatal(err)
			}
			var newRow, keyRow cdc.Row
			var op cdc.Op
			switch m := want.(type) {
			case *pglogrepl.InsertMessage:
				op, newRow = cdc.Insert, referenceRow(rel, m.Tuple)
			case *pglogrepl.UpdateMessage:
				op, newRow, keyRow = cdc.Update, referenceRow(rel, m.NewTuple), referenceRow(rel, m.OldTuple)
			case *pglogrepl.DeleteMessage:
				op, keyRow = cdc.Delete, referenceRow(rel, m.OldTuple)
			}
			ch := got[0].Change
			if ch.Op != op || ch.Table != "customers" || fmt.Sprint(ch.New) != fmt.Sprint(newRow) || fmt.Sprint(ch.Key) != fmt.Sprint(keyRow) {
				t.Fatalf("got %s new=%v key=%v\nwant %s new=%v key=%v", ch.Op, ch.New, ch.Key, op, newRow, keyRow)
			}
		})
	}
	ins := msgs["insert"]
	for _, bad := range [][]byte{
		ins[:5], ins[:8], ins[:len(ins)-1], // cut short
		append(msgBuf{}.u8('I').u32(relID).u8('X'), full("1")...),                              // unknown tuple marker
		append(msgBuf{}.u8('I').u32(relID).u8('N'), msgBuf{}.u16(1).u8('b').u32(1).u8('x')...), // binary
		append(msgBuf{}.u8('I').u32(relID).u8('N'), msgBuf{}.u16(1).u8('?')...),                // unknown type
		append(msgBuf{}.u8('I').u32(relID).u8('N'), msgBuf{}.u16(1).u8('t').u32(1<<31)...),     // length beyond the end
		append(msgBuf{}.u8('I').u32(relID).u8('N'), msgBuf{}.u16(99)...),                       // more columns than the relation
		msgBuf{}.u8('D').u32(relID), // delete without key
	} {
		d := cdc.NewDecoder()
		emit := func(cdc.Event) error { t.Fatalf("emitted from %q", bad); return nil }
		_ = d.Decode(relMsg, 0, emit)
		if err := d.Decode(bad, 0, emit); err == nil {
			t.Fatalf("no error for %q", bad)
		}
	}
	if err := cdc.NewDecoder().Decode(msgs["insert"], 0, func(cdc.Event) error { return nil }); !errorsIs(err, cdc.ErrUnknownRelation) {
		t.Fatalf("want ErrUnknownRelation, got %v", err)
	}
}

func errorsIs(err, target error) bool { return errors.Is(err, target) }
