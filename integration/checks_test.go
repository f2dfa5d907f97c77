package integration

import (
	"strconv"
	"strings"
	"testing"
)

// TestChecksRefuseBrokenRows: each invariant a row states is a CHECK
// (sql/schema.sql), and a write that breaks it fails with check_violation
// (23514) naming the constraint. The partition states are four: free,
// owned, revoking, released.
func TestChecksRefuseBrokenRows(t *testing.T) {
	t.Parallel()
	s := newSQLNodes(t)
	s.join("a", "b")
	moving := s.handingOff("a", "b")
	if len(moving) == 0 {
		t.Fatalf("a hands nothing to b: %v", s.rows())
	}
	owned := -1 // a's, and staying
	for p, r := range s.rows() {
		if r.owner == "a" && r.next == "" {
			owned = p
		}
	}
	if owned < 0 {
		t.Fatalf("a keeps nothing: %v", s.rows())
	}
	q := `"` + s.e.schema + `".`
	cases := []struct{ constraint, stmt string }{
		{"partitions_next_owner_check", `UPDATE ` + q + `partitions SET next_owner = owner WHERE ring = 'r' AND partition = ` + strconv.Itoa(owned)},
		{"partitions_next_owner_check", `UPDATE ` + q + `partitions SET owner = NULL WHERE ring = 'r' AND partition = ` + strconv.Itoa(moving[0])},
		{"partitions_released_check", `UPDATE ` + q + `partitions SET released = true WHERE ring = 'r' AND partition = ` + strconv.Itoa(owned)},
		{"partitions_versions_check", `UPDATE ` + q + `partitions SET epoch = -1 WHERE ring = 'r' AND partition = ` + strconv.Itoa(owned)},
		{"partitions_versions_check", `UPDATE ` + q + `partitions SET granted = changed + 1 WHERE ring = 'r' AND partition = ` + strconv.Itoa(owned)},
		{"partitions_partition_check", `INSERT INTO ` + q + `partitions (ring, partition) VALUES ('r', -1)`},
		{"rings_version_check", `UPDATE ` + q + `rings SET members_changed = version + 1 WHERE name = 'r'`},
		{"rings_version_check", `UPDATE ` + q + `rings SET version = 0, members_changed = 0 WHERE name = 'r'`},
		{"members_positions_check", `UPDATE ` + q + `members SET positions = positions[1:1] WHERE ring = 'r' AND node_id = 'a'`},
		{"members_positions_check", `UPDATE ` + q + `members SET positions[1] = 4294967296 WHERE ring = 'r' AND node_id = 'a'`},
		{"members_versions_check", `UPDATE ` + q + `members SET seen = -1 WHERE ring = 'r' AND node_id = 'a'`},
		{"schema_version_version_check", `UPDATE ` + q + `schema_version SET version = 0`},
	}
	for _, c := range cases {
		tx, err := s.e.admin.Begin()
		if err != nil {
			t.Fatal(err)
		}
		_, err = tx.Exec(c.stmt)
		_ = tx.Rollback()
		if sqlStateOf(err) != "23514" || !strings.Contains(err.Error(), c.constraint) {
			t.Errorf("%s: %v, want check_violation (23514) of %s", c.stmt, err, c.constraint)
		}
	}
}
