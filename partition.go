package leasering

import (
	"strings"
	"unicode/utf8"
)

// Keys map to partitions with the 64-bit hash PostgreSQL uses for hash
// partitioning of text, hashtextextended(key, 0): Bob Jenkins' lookup3 over
// the key's UTF-8 bytes read as little-endian words, returning b<<32 | c.
// The SQL function partition_of calls hashtextextended itself (with the "C"
// collation, so the bytes are hashed as they are), so Go and SQL agree bit
// for bit and SQL runs it at native speed. This mapping is part of the
// on-disk contract: keys stored by partition must never move, so it will
// not change. PostgreSQL computes this hash differently on big-endian
// servers; leasering supports little-endian servers (x86-64, arm64).

// PartitionOf returns the partition of a ring of size partitions that key
// falls in: the high 32 bits of the key's hash scaled to size. It returns -1
// when size is outside 1..65536. The SQL function partition_of(key, size)
// returns the same value for every key SQL text can hold (see
// ValidSQLKey). PartitionOf hashes any bytes, so a key with a NUL byte or
// invalid UTF-8 has a partition too, but only in Go.
func PartitionOf(key string, size int) int {
	if size < 1 || size > MaxRingSize {
		return -1
	}
	return int((uint64(keyPosition(key)) * uint64(size)) >> 32)
}

// ValidSQLKey reports whether key can be passed to the SQL function
// partition_of: valid UTF-8 without NUL bytes, which is what PostgreSQL
// text holds (in a UTF8 database; leasering refuses databases whose
// encoding would hash other bytes than Go). For any other key, Go's
// PartitionOf is the only reading.
func ValidSQLKey(key string) bool {
	return utf8.ValidString(key) && strings.IndexByte(key, 0) < 0
}

// keyPosition is the key's point on the 32-bit ring circle.
func keyPosition(key string) uint32 { return uint32(hashKey(key) >> 32) }

// hashKey is PostgreSQL's hash_bytes_extended(key, len, 0) on a
// little-endian machine.
func hashKey(key string) uint64 {
	a := 0x9e3779b9 + uint32(len(key)) + 3923095
	b, c := a, a
	k := key
	for len(k) >= 12 {
		a += le32(k[0:4])
		b += le32(k[4:8])
		c += le32(k[8:12])
		a, b, c = mix(a, b, c)
		k = k[12:]
	}
	// The last 0..11 bytes: 0-3 into a, 4-7 into b, 8-10 into c from its
	// second byte up (the lowest byte of c stands for the length).
	for i := 0; i < len(k); i++ {
		v := uint32(k[i])
		switch {
		case i < 4:
			a += v << (8 * i)
		case i < 8:
			b += v << (8 * (i - 4))
		default:
			c += v << (8 * (i - 7))
		}
	}
	a, b, c = final(a, b, c)
	return uint64(b)<<32 | uint64(c)
}

func le32(s string) uint32 {
	return uint32(s[0]) | uint32(s[1])<<8 | uint32(s[2])<<16 | uint32(s[3])<<24
}

func rotl(x uint32, k uint) uint32 { return x<<k | x>>(32-k) }

func mix(a, b, c uint32) (uint32, uint32, uint32) {
	a -= c
	a ^= rotl(c, 4)
	c += b
	b -= a
	b ^= rotl(a, 6)
	a += c
	c -= b
	c ^= rotl(b, 8)
	b += a
	a -= c
	a ^= rotl(c, 16)
	c += b
	b -= a
	b ^= rotl(a, 19)
	a += c
	c -= b
	c ^= rotl(b, 4)
	b += a
	return a, b, c
}

func final(a, b, c uint32) (uint32, uint32, uint32) {
	c ^= b
	c -= rotl(b, 14)
	a ^= c
	a -= rotl(c, 11)
	b ^= a
	b -= rotl(a, 25)
	c ^= b
	c -= rotl(b, 16)
	a ^= c
	a -= rotl(c, 4)
	b ^= a
	b -= rotl(a, 14)
	c ^= b
	c -= rotl(b, 24)
	return a, b, c
}
