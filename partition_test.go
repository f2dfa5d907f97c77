package leasering

import (
	"encoding/json"
	"fmt"
	"os"
	"testing"
)

// testdata/partition_vectors.json was computed by PostgreSQL 15
// (partition_of and hashtextextended(key COLLATE "C", 0)). PartitionOf must
// match it forever: it is the on-disk contract.
func TestPartitionOfVectors(t *testing.T) {
	b, err := os.ReadFile("testdata/partition_vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var vectors []struct {
		Key       string `json:"key"`
		Size      int    `json:"size"`
		Partition int    `json:"partition"`
		Hash      string `json:"hash"`
	}
	if err := json.Unmarshal(b, &vectors); err != nil {
		t.Fatal(err)
	}
	if len(vectors) < 100 {
		t.Fatalf("only %d vectors", len(vectors))
	}
	for _, v := range vectors {
		if got := fmt.Sprintf("%016x", hashKey(v.Key)); got != v.Hash {
			t.Errorf("hash(%q) = %s, PostgreSQL says %s", v.Key, got, v.Hash)
		}
		if got := PartitionOf(v.Key, v.Size); got != v.Partition {
			t.Errorf("PartitionOf(%q, %d) = %d, PostgreSQL says %d", v.Key, v.Size, got, v.Partition)
		}
	}
}

func TestPartitionOfRangeAndSpread(t *testing.T) {
	for _, size := range []int{0, -1, MaxRingSize + 1} {
		if got := PartitionOf("k", size); got != -1 {
			t.Errorf("PartitionOf(k, %d) = %d, want -1", size, got)
		}
	}
	const size, keys = 16, 160000
	count := make([]int, size)
	for i := 0; i < keys; i++ {
		p := PartitionOf(fmt.Sprintf("key-%d", i), size)
		if p < 0 || p >= size {
			t.Fatalf("partition %d out of range", p)
		}
		count[p]++
	}
	for p, n := range count {
		if n < keys/size*9/10 || n > keys/size*11/10 {
			t.Errorf("partition %d got %d of %d keys: badly mixed", p, n, keys)
		}
	}
}
