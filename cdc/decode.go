package cdc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
)

// Decoder turns pgoutput protocol 1 messages into Events. It keeps the relation cache (keyed by
// RelationID, replaced on every Relation message) and the open transaction. It is not safe for
// concurrent use; one Decoder serves one replication stream.
type Decoder struct {
	relations map[uint32]*pglogrepl.RelationMessage
	// tables limits which relations produce changes; nil means all.
	tables map[string]bool

	inTxn      bool
	xid        uint32
	commitLSN  pglogrepl.LSN
	commitTime time.Time
	seq        int
}

// NewDecoder returns a Decoder that emits changes for the named relations only (all when none are
// given). Relations are matched by name within any schema.
func NewDecoder(tables ...string) *Decoder {
	d := &Decoder{relations: make(map[uint32]*pglogrepl.RelationMessage)}
	if len(tables) > 0 {
		d.tables = make(map[string]bool, len(tables))
		for _, t := range tables {
			d.tables[t] = true
		}
	}
	return d
}

// InTransaction reports whether a Begin has been decoded without its Commit.
func (d *Decoder) InTransaction() bool { return d.inTxn }

// ErrUnknownRelation means a row message named a RelationID that no Relation message introduced:
// the stream is corrupt or was resumed mid-transaction.
var ErrUnknownRelation = errors.New("pgoutput: row for unknown relation")

// Decode decodes one pgoutput message (the WALData of an XLogData) and calls emit for each Event
// it yields. walStart is the XLogData's WALStart, used in errors.
func (d *Decoder) Decode(walData []byte, walStart pglogrepl.LSN, emit func(Event) error) error {
	if len(walData) > 0 {
		switch walData[0] {
		case 'I', 'U', 'D':
			// Row messages are almost all of a large load: decoded here straight into a Row,
			// without pglogrepl's per-column allocations (see BENCHMARKS.md).
			return d.rowMessage(walData, walStart, emit)
		}
	}
	msg, err := parse(walData)
	if err != nil {
		return fmt.Errorf("decoding pgoutput message at LSN %s: %w", walStart, err)
	}
	switch m := msg.(type) {
	case *pglogrepl.RelationMessage:
		d.relations[m.RelationID] = m
	case *pglogrepl.BeginMessage:
		d.inTxn, d.xid, d.commitLSN, d.commitTime, d.seq = true, m.Xid, m.FinalLSN, m.CommitTime.UTC(), 0
	case *pglogrepl.CommitMessage:
		n := d.seq
		d.inTxn, d.seq = false, 0
		return emit(Event{Kind: EventCommit, CommitLSN: m.CommitLSN, EndLSN: m.TransactionEndLSN, CommitTime: m.CommitTime.UTC(), Changes: n})
	case *pglogrepl.TruncateMessage:
		var names []string
		for _, id := range m.RelationIDs {
			if rel, ok := d.relations[id]; ok && d.wanted(rel.RelationName) {
				names = append(names, rel.RelationName)
			}
		}
		if len(names) > 0 {
			return emit(Event{Kind: EventTruncate, CommitLSN: d.commitLSN, CommitTime: d.commitTime, Tables: names})
		}
	default:
		// Type, Origin and logical decoding messages (heartbeats) carry no row change.
	}
	return nil
}

func (d *Decoder) wanted(name string) bool { return d.tables == nil || d.tables[name] }

// errShortMessage means a row message ended before its declared content.
var errShortMessage = errors.New("message too short")

// rowMessage decodes an Insert ('I' relid 'N' tuple), Update ('U' relid ['K'|'O' tuple] 'N'
// tuple) or Delete ('D' relid 'K'|'O' tuple) message and emits its change.
func (d *Decoder) rowMessage(msg []byte, walStart pglogrepl.LSN, emit func(Event) error) error {
	kind := msg[0]
	var op Op
	switch kind {
	case 'I':
		op = Insert
	case 'U':
		op = Update
	default:
		op = Delete
	}
	fail := func(err error) error {
		return fmt.Errorf("decoding pgoutput message at LSN %s: %s message: %w", walStart, op, err)
	}
	if len(msg) < 6 {
		return fail(errShortMessage)
	}
	relID := binary.BigEndian.Uint32(msg[1:5])
	rel, ok := d.relations[relID]
	if !ok {
		return fmt.Errorf("%w: relation id %d at LSN %s", ErrUnknownRelation, relID, walStart)
	}
	seq := d.seq
	d.seq++
	if !d.wanted(rel.RelationName) {
		return nil
	}
	// One string holds every column's text; each Value's Text is a slice of it (one copy, one
	// allocation, instead of two per column).
	text := string(msg)
	ch := Change{Table: rel.RelationName, Op: op, XID: d.xid, CommitLSN: d.commitLSN, CommitTime: d.commitTime, Seq: seq}
	pos := 5
	var err error
	for pos < len(msg) {
		marker := msg[pos]
		pos++
		switch {
		case marker == 'N' && kind != 'D':
			if ch.New, pos, err = tupleRow(rel, msg, text, pos); err != nil {
				return fmt.Errorf("decoding %s %s at LSN %s: %w", rel.RelationName, op, walStart, err)
			}
		case (marker == 'K' || marker == 'O') && kind != 'I' && ch.Key == nil && ch.New == nil:
			if ch.Key, pos, err = tupleRow(rel, msg, text, pos); err != nil {
				return fmt.Errorf("decoding %s %s key at LSN %s: %w", rel.RelationName, op, walStart, err)
			}
		default:
			return fail(fmt.Errorf("unexpected tuple type %q", marker))
		}
	}
	if (kind != 'D' && ch.New == nil) || (kind == 'D' && ch.Key == nil) {
		return fail(errShortMessage)
	}
	return emit(Event{Kind: EventChange, Change: ch})
}

// tupleRow decodes the TupleData at msg[pos:] into a Row named by rel's columns; text is
// string(msg), whose slices become the values. It returns the position after the tuple.
func tupleRow(rel *pglogrepl.RelationMessage, msg []byte, text string, pos int) (Row, int, error) {
	if len(msg)-pos < 2 {
		return nil, pos, errShortMessage
	}
	n := int(binary.BigEndian.Uint16(msg[pos:]))
	pos += 2
	if n > len(rel.Columns) {
		return nil, pos, fmt.Errorf("tuple has %d columns, relation %d", n, len(rel.Columns))
	}
	row := make(Row, n)
	for i := 0; i < n; i++ {
		if pos >= len(msg) {
			return nil, pos, errShortMessage
		}
		name := rel.Columns[i].Name
		c := msg[pos]
		pos++
		switch c {
		case pglogrepl.TupleDataTypeNull:
			row[name] = Value{Null: true}
		case pglogrepl.TupleDataTypeToast:
			row[name] = Value{Unchanged: true}
		case pglogrepl.TupleDataTypeText:
			if len(msg)-pos < 4 {
				return nil, pos, errShortMessage
			}
			l := int(binary.BigEndian.Uint32(msg[pos:]))
			pos += 4
			if l < 0 || l > len(msg)-pos {
				return nil, pos, errShortMessage
			}
			row[name] = Value{Text: text[pos : pos+l]}
			pos += l
		case pglogrepl.TupleDataTypeBinary:
			return nil, pos, fmt.Errorf("column %s: binary format not requested", name)
		default:
			return nil, pos, fmt.Errorf("column %s: unknown tuple data type %q", name, c)
		}
	}
	return row, pos, nil
}

// ErrMalformed means a pgoutput message could not be parsed: it is empty or truncated.
var ErrMalformed = errors.New("malformed pgoutput message")

// parse is pglogrepl.Parse, refusing empty input and turning a panic of the parser on a
// truncated message (it does not check every length) into an error.
func parse(data []byte) (msg pglogrepl.Message, err error) {
	if len(data) == 0 {
		return nil, fmt.Errorf("%w: empty", ErrMalformed)
	}
	if data[0] == 'T' {
		// Truncate: 'T', relation count (uint32), options (byte), count × relation id (uint32).
		// pglogrepl allocates the declared count before reading: check it against the length.
		if len(data) < 6 || uint64(len(data)-6) < 4*uint64(binary.BigEndian.Uint32(data[1:5])) {
			return nil, fmt.Errorf("%w: truncate message of %d bytes", ErrMalformed, len(data))
		}
	}
	defer func() {
		if r := recover(); r != nil {
			msg, err = nil, fmt.Errorf("%w: %c message of %d bytes: %v", ErrMalformed, data[0], len(data), r)
		}
	}()
	return pglogrepl.Parse(data)
}
