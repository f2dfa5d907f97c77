package leasering

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// benchLease is a lease holding every other partition of a ring of 1024,
// with a routing table of 10 members owning the partitions in turn, on a
// live client: its reads check the lease deadline on the system clock.
func benchLease() *Lease {
	c := &Client{clock: systemClock{}, epoch: time.Now()}
	c.reportUntil.Store(int64(time.Hour))
	l := newLease(c, "bench", 1024, DefaultVNodes)
	var values []int
	var epochs []int64
	for p := 0; p < 1024; p += 2 {
		values = append(values, p)
		epochs = append(epochs, int64(p))
	}
	l.publish(newSnapshot(1024, values, epochs), ErrRevoked)
	v := ringChange{Changed: make([]int, 1024), Owners: make([]int, 1024)}
	for i := 0; i < 10; i++ {
		m := memberView{ID: fmt.Sprint("node-", i), VNodes: 8}
		for j := 0; j < 8; j++ {
			m.Positions = append(m.Positions, uint32(i*8+j)*53687091)
		}
		v.Members = append(v.Members, m)
		v.MemberIDs = append(v.MemberIDs, m.ID)
	}
	for p := range v.Changed {
		v.Changed[p], v.Owners[p] = p, p%10
	}
	l.route.Store(l.route.Load().update(1024, v))
	return l
}

// benchKeys are 16-byte keys.
var benchKeys = func() []string {
	ks := make([]string, 1024)
	for i := range ks {
		ks[i] = fmt.Sprintf("order-%010d", i)
	}
	return ks
}()

func BenchmarkPartitionOf(b *testing.B) {
	b.ReportAllocs()
	n := 0
	for i := 0; i < b.N; i++ {
		n += PartitionOf(benchKeys[i&1023], 1024)
	}
	sink = n
}

func BenchmarkPartitionOfParallel(b *testing.B) {
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i, n := 0, 0
		for pb.Next() {
			n += PartitionOf(benchKeys[i&1023], 1024)
			i++
		}
		sinkMu.Lock()
		sink += n
		sinkMu.Unlock()
	})
}

func BenchmarkOwnsKey(b *testing.B) {
	l := benchLease()
	b.ReportAllocs()
	n := 0
	for i := 0; i < b.N; i++ {
		if l.OwnsKey(benchKeys[i&1023]) {
			n++
		}
	}
	sink = n
}

func BenchmarkOwnsKeyParallel(b *testing.B) {
	l := benchLease()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			l.OwnsKey(benchKeys[i&1023])
			i++
		}
	})
}

func BenchmarkOwner(b *testing.B) {
	l := benchLease()
	b.ReportAllocs()
	n := 0
	for i := 0; i < b.N; i++ {
		if m, ok := l.Owner(benchKeys[i&1023]); ok {
			n += len(m.ID)
		}
	}
	if n == 0 {
		b.Fatal("no owner")
	}
	sink = n
}

func BenchmarkOwnerParallel(b *testing.B) {
	l := benchLease()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			l.Owner(benchKeys[i&1023])
			i++
		}
	})
}

var (
	sink   int
	sinkMu sync.Mutex
)

func BenchmarkValues(b *testing.B) {
	l := benchLease()
	b.ReportAllocs()
	n := 0
	for i := 0; i < b.N; i++ {
		n += len(l.Values())
	}
	if n == 0 {
		b.Fatal("empty")
	}
}

func BenchmarkValuesParallel(b *testing.B) {
	l := benchLease()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		n, runs := 0, 0
		for pb.Next() {
			n += len(l.Values())
			runs++
		}
		if runs > 0 && n == 0 {
			b.Error("empty")
		}
	})
}

func BenchmarkOwns(b *testing.B) {
	l := benchLease()
	b.ReportAllocs()
	n := 0
	for i := 0; i < b.N; i++ {
		if l.Owns(i & 1023) {
			n++
		}
	}
	if n == 0 {
		b.Fatal("owns nothing")
	}
}

func BenchmarkOwnsParallel(b *testing.B) {
	l := benchLease()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			l.Owns(i & 1023)
			i++
		}
	})
}

// BenchmarkSetMembers: a route table's new member list, 2,000 members of 8
// vnodes each (TestScale's 2,000 nodes), which every node lays out for each
// view whose member list changed: from nothing, and after one member joined.
func BenchmarkSetMembers(b *testing.B) {
	views := make([]memberView, 2001)
	for i := range views {
		pos := make([]uint32, 8)
		for j := range pos {
			pos[j] = uint32(i*2654435761 + j*40503)
		}
		views[i] = memberView{ID: fmt.Sprintf("s%04d", i), VNodes: 8, Positions: pos}
	}
	b.Run("whole", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var t routeTable
			t.setMembers(views[:2000], nil)
		}
	})
	b.Run("one joined", func(b *testing.B) {
		var prev routeTable
		prev.setMembers(views[:2000], nil)
		b.ReportAllocs()
		for b.Loop() {
			var t routeTable
			t.setMembers(views, &prev)
		}
	})
}
