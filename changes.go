package leasering

// Change is a change in what this node owns on a ring.
type Change struct {
	Assigned []int // partitions now owned that were not, sorted
	Revoked  []int // partitions no longer owned, sorted
}

// Changes returns a channel that delivers the changes in Values in order.
// The heartbeat never waits for the reader: while the reader is busy,
// changes coalesce into one, from what it last received to the latest
// state, so a slow reader skips intermediate states but never misses the
// latest one. A partition lost for a moment to self-fencing and regained
// shows as revoked, then assigned. The channel is closed when the lease
// ends (Close, fencing, a size mismatch): take that as everything revoked.
// Every call returns the same channel.
func (l *Lease) Changes() <-chan Change {
	l.changesOnce.Do(func() {
		l.changes = make(chan Change)
		go l.deliverChanges()
	})
	return l.changes
}

func (l *Lease) deliverChanges() {
	defer close(l.changes)
	var seen []int // what the reader has been told
	for {
		changed, err := l.state()
		if err != nil {
			return
		}
		now := l.Values()
		d := diffSorted(seen, now)
		if len(d.Assigned) == 0 && len(d.Revoked) == 0 {
			<-changed
			continue
		}
		select {
		case l.changes <- d:
			seen = now
		case <-changed: // newer state: offer that instead
		}
	}
}

// diffSorted compares two sorted partition lists.
func diffSorted(before, after []int) Change {
	var c Change
	i, j := 0, 0
	for i < len(before) || j < len(after) {
		switch {
		case j == len(after) || (i < len(before) && before[i] < after[j]):
			c.Revoked = append(c.Revoked, before[i])
			i++
		case i == len(before) || after[j] < before[i]:
			c.Assigned = append(c.Assigned, after[j])
			j++
		default:
			i++
			j++
		}
	}
	return c
}
