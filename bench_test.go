package leasering

import "testing"

// benchLease is a lease holding every other partition of a ring of 1024.
func benchLease() *Lease {
	l := newLease(nil, "bench", 1024, DefaultVNodes)
	var values []int
	var epochs []int64
	for p := 0; p < 1024; p += 2 {
		values = append(values, p)
		epochs = append(epochs, int64(p))
	}
	l.publish(newSnapshot(1024, values, epochs), ErrRevoked)
	return l
}

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
