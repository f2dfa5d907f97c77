package localpg

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// staleAge is how long a directory left by a dead process must have been
// untouched before sweepStale removes it. Tests shorten it.
var staleAge = time.Minute

// sweepStale removes the directories that earlier Starts left behind in the
// temporary directory when their process died without Stop (a SIGKILL, a
// crash): those whose lock is free, whose postmaster is not running and
// which have not changed for staleAge. Errors are ignored.
func sweepStale() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	for _, d := range dirs {
		fi, err := os.Lstat(d)
		if err != nil || !fi.IsDir() || time.Since(fi.ModTime()) < staleAge {
			continue
		}
		f, err := os.OpenFile(filepath.Join(d, lockName), os.O_RDWR, 0)
		if err != nil {
			continue
		}
		if tryLockFile(f) && !postmasterAlive(filepath.Join(d, "data", "postmaster.pid")) {
			_ = os.RemoveAll(d)
		}
		_ = f.Close()
	}
}

// postmasterAlive tells whether the process named in a postmaster.pid file
// runs.
func postmasterAlive(path string) bool {
	b, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	return err == nil && pidAlive(pid)
}
