package integration

import (
	"database/sql"
	"encoding/json"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/leasering/leasering"
)

// oldNode is a node of an older release, driven by hand: it calls
// renew_and_read with that release's arguments and reads the answers as
// that release's client did. values() reports what that client's Values()
// would: the partitions of its last view it was not told to give up, from
// the heartbeat that told it, while its lease lasts.
type oldNode struct {
	t       testing.TB
	db      *sql.DB
	schema  string
	id, inc string
	ring    string
	size    int
	client  oldClient
	stopc   chan struct{}
	done    chan struct{}

	mu         sync.Mutex
	claimed    bool
	version    int64
	owned      []int
	revoking   map[int]bool
	deadline   time.Time // reports nothing past it
	holdUntil  time.Time // nor before it
	unreadable int       // answers its client could not read (a failed heartbeat)
	lapseNext  bool      // the next heartbeat ends the lease first, in its own transaction
	lapsed     bool      // it did
	stopped    bool
}

func startOldNode(t testing.TB, e *env, id string, client oldClient) *oldNode {
	db := openPool(t, e.dsn)
	o := &oldNode{t: t, db: db, schema: e.schema, id: id, inc: "inc-" + id, ring: "r", size: 64, client: client,
		stopc: make(chan struct{}), done: make(chan struct{}), revoking: map[int]bool{}}
	go func() {
		defer close(o.done)
		tick := time.NewTicker(e.heartbeat)
		defer tick.Stop()
		for {
			o.heartbeat()
			select {
			case <-o.stopc:
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(o.stop)
	return o
}

// stop ends the process: it reports nothing and sends nothing more.
func (o *oldNode) stop() {
	o.mu.Lock()
	if o.stopped {
		o.mu.Unlock()
		return
	}
	o.stopped = true
	o.mu.Unlock()
	close(o.stopc)
	<-o.done
}

func (o *oldNode) values() []int {
	o.mu.Lock()
	defer o.mu.Unlock()
	now := time.Now()
	if o.stopped || now.After(o.deadline) || now.Before(o.holdUntil) {
		return nil
	}
	var out []int
	for _, p := range o.owned {
		if !o.revoking[p] {
			out = append(out, p)
		}
	}
	return out
}

type oldView struct {
	Ring       string  `json:"ring"`
	Version    int64   `json:"version"`
	Status     string  `json:"status"`
	Partitions []int   `json:"partitions"`
	Epochs     []int64 `json:"epochs"`
	Revoking   []int   `json:"revoking"`
	Changed    []int   `json:"changed"`
	Owners     []int   `json:"owners"`
}

func (o *oldNode) heartbeat() {
	o.mu.Lock()
	claim, lapse := !o.claimed, o.lapseNext
	o.lapseNext = false
	released := []int{}
	for p := range o.revoking { // it stopped reporting them when it heard
		released = append(released, p)
	}
	sort.Ints(released)
	arg, _ := json.Marshal([]map[string]any{{"ring": o.ring, "size": o.size, "vnodes": leasering.DefaultVNodes,
		"version": o.version, "released": released}})
	o.mu.Unlock()

	sent := time.Now()
	tx, err := o.db.Begin()
	if err != nil {
		return
	}
	defer tx.Rollback()
	if lapse {
		if _, err := tx.Exec(`UPDATE "`+o.schema+`".nodes SET expires_at = now() - interval '1 second' WHERE node_id = $1`, o.id); err != nil {
			return
		}
	}
	var leaseMS, holdMS int64
	var status string
	var changes sql.NullString
	err = tx.QueryRow(`SELECT lease_ms, hold_ms, node_status, changes::text FROM "`+o.schema+`".renew_and_read($1, $2, 2000, '', $3::jsonb, $4, true, clock_timestamp())`,
		o.id, o.inc, string(arg), claim).Scan(&leaseMS, &holdMS, &status, &changes)
	if err != nil || tx.Commit() != nil {
		return // a failed heartbeat: the lease it may have extended does not count
	}
	recv := time.Now()
	var views []oldView
	if changes.Valid {
		if err := json.Unmarshal([]byte(changes.String), &views); err != nil {
			o.t.Errorf("%s: answer %s: %v", o.id, changes.String, err)
			return
		}
	}
	var joins []string
	o.mu.Lock()
	defer o.mu.Unlock()
	o.lapsed = o.lapsed || lapse
	if status != "ok" && status != "rejoined" {
		o.unreadable++
		return
	}
	for _, v := range views {
		known := v.Status == "ok" || v.Status == "size_mismatch"
		if o.client.joinRings {
			known = known || v.Status == "join" || v.Status == "later" || v.Status == "view"
		}
		if !known || len(v.Epochs) != len(v.Partitions) || len(v.Changed) != len(v.Owners) {
			o.unreadable++ // its client fails the whole heartbeat
			return
		}
	}
	o.claimed = true
	o.deadline = sent.Add(time.Duration(leaseMS) * time.Millisecond)
	o.holdUntil = recv.Add(time.Duration(holdMS) * time.Millisecond)
	if status == "rejoined" && o.client.forgetOnRejoin && !slices.ContainsFunc(views, func(v oldView) bool { return v.Status == "ok" }) {
		o.version, o.owned, o.revoking = 0, nil, map[int]bool{}
	}
	for _, v := range views {
		switch v.Status {
		case "join": // nothing of the ring until a fresh view
			o.version, o.owned, o.revoking = 0, nil, map[int]bool{}
			joins = append(joins, v.Ring)
		case "ok":
			o.version, o.owned, o.revoking = v.Version, v.Partitions, map[int]bool{}
			for _, p := range v.Revoking {
				o.revoking[p] = true
			}
		}
	}
	for _, ring := range joins {
		rings, _ := json.Marshal([]map[string]any{{"ring": ring, "size": o.size, "vnodes": leasering.DefaultVNodes}})
		var answer string
		if err := o.db.QueryRow(`SELECT "`+o.schema+`".join_rings($1, $2, $3::jsonb, 1000)::text`, o.id, o.inc, string(rings)).Scan(&answer); err != nil {
			o.t.Logf("%s: join_rings: %v", o.id, err)
		}
	}
}
