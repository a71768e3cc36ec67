package cdc

import (
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
	msg, err := pglogrepl.Parse(walData)
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
	case *pglogrepl.InsertMessage:
		return d.row(m.RelationID, Insert, m.Tuple, nil, walStart, emit)
	case *pglogrepl.UpdateMessage:
		return d.row(m.RelationID, Update, m.NewTuple, m.OldTuple, walStart, emit)
	case *pglogrepl.DeleteMessage:
		return d.row(m.RelationID, Delete, nil, m.OldTuple, walStart, emit)
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

func (d *Decoder) row(relID uint32, op Op, newTuple, oldTuple *pglogrepl.TupleData, walStart pglogrepl.LSN, emit func(Event) error) error {
	rel, ok := d.relations[relID]
	if !ok {
		return fmt.Errorf("%w: relation id %d at LSN %s", ErrUnknownRelation, relID, walStart)
	}
	seq := d.seq
	d.seq++
	if !d.wanted(rel.RelationName) {
		return nil
	}
	ch := Change{Table: rel.RelationName, Op: op, XID: d.xid, CommitLSN: d.commitLSN, CommitTime: d.commitTime, Seq: seq}
	var err error
	if newTuple != nil {
		if ch.New, err = tupleRow(rel, newTuple); err != nil {
			return fmt.Errorf("decoding %s %s at LSN %s: %w", rel.RelationName, op, walStart, err)
		}
	}
	if oldTuple != nil {
		if ch.Key, err = tupleRow(rel, oldTuple); err != nil {
			return fmt.Errorf("decoding %s %s key at LSN %s: %w", rel.RelationName, op, walStart, err)
		}
	}
	return emit(Event{Kind: EventChange, Change: ch})
}

func tupleRow(rel *pglogrepl.RelationMessage, t *pglogrepl.TupleData) (Row, error) {
	if len(t.Columns) > len(rel.Columns) {
		return nil, fmt.Errorf("tuple has %d columns, relation %d", len(t.Columns), len(rel.Columns))
	}
	row := make(Row, len(t.Columns))
	for i, c := range t.Columns {
		name := rel.Columns[i].Name
		switch c.DataType {
		case pglogrepl.TupleDataTypeNull:
			row[name] = Value{Null: true}
		case pglogrepl.TupleDataTypeToast:
			row[name] = Value{Unchanged: true}
		case pglogrepl.TupleDataTypeText:
			row[name] = Value{Text: string(c.Data)}
		case pglogrepl.TupleDataTypeBinary:
			return nil, fmt.Errorf("column %s: binary format not requested", name)
		default:
			return nil, fmt.Errorf("column %s: unknown tuple data type %q", name, c.DataType)
		}
	}
	return row, nil
}
