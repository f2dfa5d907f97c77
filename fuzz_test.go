package leasering

import (
	"database/sql"
	"testing"
	"time"
)

// refHash is hash_bytes_extended(k, len, 0) as PostgreSQL writes it for
// unaligned data on a little-endian machine: a second, independent reading
// of the algorithm to check hashKey against.
func refHash(k []byte) uint64 {
	n := uint32(len(k))
	a := 0x9e3779b9 + n + 3923095
	b, c := a, a
	for len(k) >= 12 {
		a += uint32(k[0]) + uint32(k[1])<<8 + uint32(k[2])<<16 + uint32(k[3])<<24
		b += uint32(k[4]) + uint32(k[5])<<8 + uint32(k[6])<<16 + uint32(k[7])<<24
		c += uint32(k[8]) + uint32(k[9])<<8 + uint32(k[10])<<16 + uint32(k[11])<<24
		a, b, c = mix(a, b, c)
		k = k[12:]
	}
	switch len(k) {
	case 11:
		c += uint32(k[10]) << 24
		fallthrough
	case 10:
		c += uint32(k[9]) << 16
		fallthrough
	case 9:
		c += uint32(k[8]) << 8
		fallthrough
	case 8:
		b += uint32(k[7]) << 24
		fallthrough
	case 7:
		b += uint32(k[6]) << 16
		fallthrough
	case 6:
		b += uint32(k[5]) << 8
		fallthrough
	case 5:
		b += uint32(k[4])
		fallthrough
	case 4:
		a += uint32(k[3]) << 24
		fallthrough
	case 3:
		a += uint32(k[2]) << 16
		fallthrough
	case 2:
		a += uint32(k[1]) << 8
		fallthrough
	case 1:
		a += uint32(k[0])
	}
	a, b, c = final(a, b, c)
	return uint64(b)<<32 | uint64(c)
}

func FuzzPartitionOf(f *testing.F) {
	for _, seed := range []string{"", "a", "abcdefghijk", "abcdefghijkl", "order-0000000042", "ключ 🔑"} {
		f.Add(seed, 1024)
	}
	f.Fuzz(func(t *testing.T, key string, size int) {
		if got, want := hashKey(key), refHash([]byte(key)); got != want {
			t.Fatalf("hashKey(%q) = %x, reference %x", key, got, want)
		}
		p := PartitionOf(key, size)
		if size < 1 || size > MaxRingSize {
			if p != -1 {
				t.Fatalf("PartitionOf(%q, %d) = %d, want -1", key, size, p)
			}
			return
		}
		if p < 0 || p >= size {
			t.Fatalf("PartitionOf(%q, %d) = %d, out of range", key, size, p)
		}
		if p != PartitionOf(key, size) {
			t.Fatal("not deterministic")
		}
		// A finer ring never moves a key backwards: partitions are arcs.
		if size*2 <= MaxRingSize && PartitionOf(key, size*2)/2 != p {
			t.Fatalf("key %q: partition %d of %d, but %d of %d", key, p, size, PartitionOf(key, size*2), size*2)
		}
	})
}

// FuzzDecodeChanges feeds arbitrary heartbeat answers to the decoder and,
// when it accepts one, to the lease: nothing may panic, and what is
// accepted must be well formed.
func FuzzDecodeChanges(f *testing.F) {
	for _, seed := range []string{
		`[{"ring":"r","version":2,"status":"ok","partitions":[0,3],"epochs":[1,2],"revoking":[3],"members":[{"id":"a","vnodes":8,"positions":[1,99]}],"changed":[0,3],"owners":[0,0]}]`,
		`[{"ring":"r","status":"size_mismatch","size":64}]`,
		`[{"ring":"r","version":1,"status":"ok","partitions":[99],"epochs":[1],"changed":[99],"owners":[7]}]`,
		`[]`, `null`, `{`, `[{"ring":""}]`,
	} {
		f.Add("ok", seed)
	}
	f.Add("fenced", `{"incarnation":"x"}`)
	f.Fuzz(func(t *testing.T, status, changes string) {
		var res renewResult
		err := decodeChanges(status, sql.NullString{String: changes, Valid: true}, &res)
		if err != nil {
			return
		}
		l := newLease(nil, "r", 16, 8)
		for _, ch := range res.changes {
			if ch.Ring == "" || len(ch.Epochs) != len(ch.Partitions) || len(ch.Changed) != len(ch.Owners) {
				t.Fatalf("accepted a malformed change %+v", ch)
			}
			l.applyView(ch, time.Now())
			for _, p := range l.view.current.values {
				if p < 0 || p >= 16 {
					t.Fatalf("snapshot holds partition %d of 16", p)
				}
			}
			for p := 0; p < 16; p++ {
				l.OwnerOf(p)
			}
			l.Successors("k", 3)
		}
	})
}
