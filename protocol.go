package leasering

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"time"
)

// ringRequest is one ring in the heartbeat's argument.
type ringRequest struct {
	Ring     string `json:"ring"`
	Size     int    `json:"size"`
	VNodes   int    `json:"vnodes"`
	Version  int64  `json:"version"`
	Released []int  `json:"released,omitempty"`
	// ReleaseAfterMS: Released goes ahead of its drain's end, which is
	// this long after the call is sent: the database commits the release
	// no earlier than that long after the statement began (drain.go).
	ReleaseAfterMS int64 `json:"release_after_ms,omitempty"`
	// releaseBy is the drain's end that ReleaseAfterMS counts to: renew
	// counts it again just before the call goes, so that the time the
	// call spent meanwhile (a pool's queue, encoding thousands of
	// releases, a starved goroutine) does not push the commit past the
	// end by as much.
	releaseBy time.Time
	// Incoming: the node waits for partitions handed to it; when nothing
	// else changed, the answer says only when they are due.
	Incoming bool `json:"incoming,omitempty"`
	// AwaitMS, on a look: how long the database may wait for the ring to
	// move before it answers (drain.go's lookAwait).
	AwaitMS int64 `json:"await_ms,omitempty"`
	// AwaitReleaseMS, on a look: how long, past AwaitMS, the database may
	// go on waiting while the owner's call that releases what the node
	// waits for is on its way (drain.go's awaitOnItsWay).
	AwaitReleaseMS int64 `json:"await_release_ms,omitempty"`
	// LaterIfBusy: answer "later" with Busy when a lock the view needs is
	// busy (the schedule backs off from those); a client before schema
	// version 12 does not say it and gets no answer, as it did.
	LaterIfBusy bool `json:"later_if_busy,omitempty"`
	// OwnOnly: answer a view only if something this node owns or waits
	// for changed since Version; its routing can wait (see ownOnly).
	OwnOnly bool `json:"own_only,omitempty"`
	// OwnView: a view, if one comes, leaves the routing out (schema
	// version 17): what the node owns and waits for, with Version as the
	// view's; the routing stays at the version of the last whole view,
	// which the node sends as Version when it wants it (see ownOnly).
	OwnView bool `json:"own_view,omitempty"`
	// OwnerIDs: the routing, if one comes, names the owners that changed
	// by node id (ringChange.OwnerIDs; schema version 18), which the
	// database sends for less than their indexes into the members.
	OwnerIDs bool `json:"owner_ids,omitempty"`
	// SettleWake: while a burst of joins settles in the ring (schema
	// version 20) and this node owns partitions there, answer
	// ringSettling with SettlesMS: the node renews just after, to hear at
	// once what it gives up to the newcomers.
	SettleWake bool `json:"settle_wake,omitempty"`
	// For join_rings: the node's heartbeat and drain, from which the
	// database tells pending owners when what this node gives up is due.
	HeartbeatMS int64  `json:"heartbeat_ms,omitempty"`
	DrainMS     *int64 `json:"drain_ms,omitempty"`
	// recorded: join_rings has recorded the join already (the client's
	// own, not sent).
	recorded bool
}

// ringChange is one ring in the heartbeat's answer: the node's whole view of
// a ring whose version moved since the one it sent.
type ringChange struct {
	Ring       string  `json:"ring"`
	Version    int64   `json:"version"`
	Status     string  `json:"status"` // a view ("ok"), or one of the ringStatus values
	Size       int     `json:"size"`   // the ring's real size, with size_mismatch
	Partitions []int   `json:"partitions"`
	Epochs     []int64 `json:"epochs"`
	Revoking   []int   `json:"revoking"`
	// Routing changes since the version the node sent: when the members
	// changed (nil: unchanged), all their ids in order and the details of
	// those that joined or changed since; and the partitions whose owner
	// changed with the owner's index into the members (-1: none), or, if
	// the request said OwnerIDs, with its node id ("": none; an id that
	// is not a member's counts as none).
	MemberIDs []string     `json:"member_ids"`
	Members   []memberView `json:"members"`
	Changed   []int        `json:"changed"`
	Owners    []int        `json:"owners"`
	OwnerIDs  []string     `json:"owner_ids"`
	// OwnView: the view leaves the routing out (ringRequest.OwnView).
	OwnView bool `json:"own_view"`
	// Incoming: when the partitions pending to this node are due, in
	// milliseconds from the answer, sorted (negative: overdue), and how
	// many more wait with no due time known.
	Incoming        []int64 `json:"incoming"`
	IncomingUnknown int     `json:"incoming_unknown"`
	// WaitedMS: how long the call waited for the ring to move (AwaitMS),
	// or for the drain's end of a release sent ahead (ReleaseAfterMS).
	WaitedMS int64 `json:"waited_ms"`
	// Busy, with "later": a lock the view needs was busy (rather than the
	// heartbeat out of time).
	Busy bool `json:"busy"`
	// SettlesMS, with "settling": the burst of joins settles this long
	// after the answer (ringRequest.SettleWake).
	SettlesMS int64 `json:"settles_ms"`
}

type memberView struct {
	ID        string   `json:"id"`
	Metadata  string   `json:"metadata"`
	VNodes    int      `json:"vnodes"`
	Positions []uint32 `json:"positions"`
}

// Ring statuses in a heartbeat's answer other than a view ("ok").
const (
	ringSizeMismatch = "size_mismatch" // the ring exists with another size (Size)
	ringToJoin       = "join"          // not a member (or with other vnodes): join with join_rings
	ringLater        = "later"         // the heartbeat ran out of time: the view comes with the next
	ringView         = "view"          // the view is big: read it with read_views
	ringIncoming     = "incoming"      // nothing changed; Incoming says when what the node waits for is due
	ringSettling     = "settling"      // a burst of joins settles in SettlesMS: renew just after (the view may come in another entry)
)

// Node statuses returned by renew_and_read.
const (
	statusOK       = "ok"
	statusRejoined = "rejoined"
	statusFenced   = "fenced"
	statusLapsed   = "lapsed" // answer to a probe: no lease
)

// renewResult is one heartbeat's outcome.
type renewResult struct {
	sent, recv time.Time     // monotonic times around the call
	lease      time.Duration // lease time left when the database answered
	hold       time.Duration // report nothing for this long after recv
	scanned    bool          // the call looked for the earliest other lease end
	probe      bool          // the call only asked how long the lease has left
	nextExpiry time.Duration // another node's lease ends in this long (-1: none or not scanned)
	status     string
	changes    []ringChange
	other      string        // with statusFenced: the incarnation that took over
	late       time.Duration // > 0: the database answered this long after the call was sent, past a quarter of a lease (see renew)
	announce   string        // JSON array of the rings this call changed, to NOTIFY
	waited     time.Duration // the call waited this long in the database: a look for a release, a release for its drain's end (not time on the way)
	poolWait   time.Duration // the call waited this long for a connection of the *sql.DB's pool before it was sent
	released   int           // partitions whose release the call carried
	waiting    bool          // the call said the node waits for partitions handed to it (ringRequest.Incoming)
	wal        walPlace      // where the database's WAL stood (a renewal's answer)
	asked      renewOpts     // what the call asked for
	err        error
}

// rtt is the call's round trip: its time on the way and in the database,
// without a look's wait for a release or a release's wait for its drain.
func (r renewResult) rtt() time.Duration { return r.recv.Sub(r.sent) - r.waited }

// renew makes one call of renew_and_read, the heartbeat: it extends the
// node's lease, confirms the releases and reads the rings that changed
// (see renewOpts for what else it may ask).
//
// sentAt is when the call is sent on the database's clock, as dbClock
// estimates it from the answers so far; a call the database finds older
// than a quarter of a lease extends nothing.
func (c *Client) renew(ctx context.Context, rings []ringRequest, opts renewOpts) renewResult {
	scan := opts.scan && !opts.probe
	res := renewResult{sent: c.clock.Now(), scanned: scan, probe: opts.probe, asked: opts}
	for _, r := range rings {
		res.released += len(r.Released)
		res.waiting = res.waiting || r.Incoming
	}
	q := c.db
	release := func() {}
	if pool, ok := c.db.(*sql.DB); ok {
		// Take the connection first, so that the time a call waited in the
		// pool's queue does not count as time on the way: the database
		// would take a call delayed by a busy pool for a late one.
		conn, err := pool.Conn(ctx)
		if err != nil {
			res.recv, res.err = c.clock.Now(), err
			return res
		}
		release = func() { _ = conn.Close() } // a second Close does nothing (ErrConnDone)
		defer release()
		start := res.sent
		q, res.sent = conn, c.clock.Now()
		res.poolWait = res.sent.Sub(start)
	}
	var sentAt sql.NullTime
	if at, ok := c.dbClock.at(res.sent); ok {
		sentAt = sql.NullTime{Time: at, Valid: true}
	}
	ttl := c.cfg.ttl.Milliseconds()
	if opts.probe {
		ttl, rings = 0, []ringRequest{}
	}
	sending := c.clock.Now()
	for i := range rings {
		if !rings[i].releaseBy.IsZero() {
			rings[i].ReleaseAfterMS = releaseAfterMS(rings[i].releaseBy, sending)
		}
	}
	arg, err := json.Marshal(rings)
	if err != nil {
		res.err = err
		return res
	}
	var leaseMS, holdMS int64
	var nextExpiryMS sql.NullInt64
	var changes, announce sql.NullString
	var dbTime sql.NullTime
	var walInsert, walFlush sql.NullInt64
	var durable sql.NullBool
	err = c.inTx(ctx, q, func(q DB) error {
		return q.QueryRowContext(ctx, c.q.renew,
			c.cfg.nodeID, c.incarnation, ttl, c.cfg.metadata, string(arg), opts.claim, scan, sentAt, opts.async && !opts.probe,
		).Scan(&leaseMS, &holdMS, &nextExpiryMS, &res.status, &changes, &announce, &dbTime, &walInsert, &walFlush, &durable)
	})
	res.recv = c.clock.Now()
	// Back to the pool before the answer is decoded: a view of a big ring
	// takes milliseconds to decode, and the pool's other nodes may be
	// waiting for a connection. Held through the decoding, 100 nodes on a
	// pool of 20 found every connection taken, idle in the database, while
	// views went out during a roll-out, and a heartbeat waited past its
	// timeout (TestScale).
	release()
	if err == nil && dbTime.Valid {
		c.dbClock.observe(dbTime.Time, res.recv)
		if took := dbTime.Time.Sub(sentAt.Time); sentAt.Valid && !opts.probe && took > c.cfg.ttl/4 {
			res.late = took
		}
	}
	if err != nil {
		res.err = classifyDBError(err)
		return res
	}
	res.announce = announce.String
	res.wal.known = walInsert.Valid && walFlush.Valid
	res.wal.insert, res.wal.flush = walInsert.Int64, walFlush.Int64
	res.wal.async = !durable.Bool
	res.lease = time.Duration(leaseMS) * time.Millisecond
	res.hold = time.Duration(holdMS) * time.Millisecond
	res.nextExpiry = -1
	if nextExpiryMS.Valid {
		res.nextExpiry = time.Duration(nextExpiryMS.Int64) * time.Millisecond
	}
	res.err = decodeChanges(res.status, changes, &res)
	for _, ch := range res.changes {
		res.waited = max(res.waited, time.Duration(ch.WaitedMS)*time.Millisecond)
	}
	res.waited = min(res.waited, res.recv.Sub(res.sent))
	return res
}

// decodeChanges parses the changes column for the given node status.
func decodeChanges(status string, changes sql.NullString, res *renewResult) error {
	switch status {
	case statusOK, statusRejoined, statusLapsed:
		if !changes.Valid {
			return nil
		}
		if err := json.Unmarshal([]byte(changes.String), &res.changes); err != nil {
			return fmt.Errorf("leasering: decoding heartbeat answer: %w", err)
		}
		for _, ch := range res.changes {
			if ch.Ring == "" || (ch.Status != "ok" && ch.Status != ringSizeMismatch && ch.Status != ringToJoin && ch.Status != ringLater && ch.Status != ringView && ch.Status != ringIncoming && ch.Status != ringSettling) ||
				len(ch.Epochs) != len(ch.Partitions) || !ch.routingFits() {
				return fmt.Errorf("leasering: malformed heartbeat answer for ring %q", ch.Ring)
			}
		}
		return nil
	case statusFenced:
		var f struct {
			Incarnation string `json:"incarnation"`
		}
		if changes.Valid {
			_ = json.Unmarshal([]byte(changes.String), &f) // only for the log
		}
		res.other = f.Incarnation
		return nil
	default:
		return fmt.Errorf("leasering: unknown node status %q from the database", status)
	}
}

// inTx runs fn, one of the library's statements, in a transaction of its
// own: the statement's implicit one, one round trip. The protocol needs
// READ COMMITTED; where the database or role sets another default
// isolation, the entry points refuse to start (SQLSTATE LR005), and from
// then on this client runs each call in an explicit READ COMMITTED
// transaction, at the cost of two more round trips (BEGIN and COMMIT).
func (c *Client) inTx(ctx context.Context, q DB, fn func(DB) error) error {
	if !c.explicitTx.Load() {
		err := fn(q)
		if sqlState(err) != stateNotReadCommit {
			return err
		}
		if c.explicitTx.CompareAndSwap(false, true) {
			c.log.Info("leasering: the database's default transaction isolation is not READ COMMITTED; " +
				"each call now runs in an explicit READ COMMITTED transaction")
		}
	}
	b, ok := q.(txBeginner)
	if !ok {
		return fmt.Errorf("%w: the database's default transaction isolation is not READ COMMITTED and the DB handle (%T) cannot begin transactions", ErrUnsupported, q)
	}
	tx, err := b.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
	if err != nil {
		return &beginError{err}
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}

// txBeginner is what *sql.DB and *sql.Conn have and DB does not need.
type txBeginner interface {
	BeginTx(ctx context.Context, opts *sql.TxOptions) (*sql.Tx, error)
}

// beginError is the failure of an explicit transaction's BEGIN, which a
// pooler in statement mode refuses (see poolerAdvice). Its text is the
// driver's.
type beginError struct{ err error }

func (e *beginError) Error() string { return e.err.Error() }
func (e *beginError) Unwrap() error { return e.err }
