package localpg

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"
)

// search says where to look for the server binaries. Tests replace it.
type search struct {
	path  string   // a PATH value
	globs []string // directories to try after PATH and pg_config, in order
}

// defaultSearch looks in $PATH, then pg_config --bindir, then the usual
// Debian and Homebrew places.
func defaultSearch() search {
	return search{
		path: os.Getenv("PATH"),
		globs: []string{
			"/usr/lib/postgresql/*/bin",
			"/opt/homebrew/opt/postgresql*/bin",
			"/usr/local/opt/postgresql*/bin",
			"/opt/homebrew/bin",
			"/usr/local/bin",
		},
	}
}

// serverBinaries are the programs Start needs; initdb finds postgres in its
// own directory, so both must be in the same one.
var serverBinaries = []string{"initdb", "postgres"}

// binDir returns the first directory holding initdb and postgres: the
// directory of initdb found in s.path (symbolic links resolved), then
// pg_config --bindir (pg_config found in s.path), then each of s.globs,
// the newest version first within a pattern. The error wraps ErrNoPostgres.
func (s search) binDir(ctx context.Context) (string, error) {
	var tried []string
	if p := lookPath("initdb", s.path); p != "" {
		if real, err := filepath.EvalSymlinks(p); err == nil && hasServer(filepath.Dir(real)) {
			return filepath.Dir(real), nil
		}
		if hasServer(filepath.Dir(p)) {
			return filepath.Dir(p), nil
		}
		tried = append(tried, filepath.Dir(p)+" (initdb without postgres)")
	} else {
		tried = append(tried, "$PATH")
	}
	if p := lookPath("pg_config", s.path); p != "" {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		out, err := exec.CommandContext(ctx, p, "--bindir").Output()
		cancel()
		if dir := strings.TrimSpace(string(out)); err == nil && dir != "" {
			if hasServer(dir) {
				return dir, nil
			}
			tried = append(tried, dir+" (from pg_config --bindir)")
		}
	}
	for _, g := range s.globs {
		dirs, _ := filepath.Glob(g)
		sort.SliceStable(dirs, func(i, j int) bool { return versionLess(dirs[j], dirs[i]) })
		for _, d := range dirs {
			if hasServer(d) {
				return d, nil
			}
		}
		tried = append(tried, g)
	}
	return "", fmt.Errorf("%w: initdb and postgres are in none of %s; install them with: %s",
		ErrNoPostgres, strings.Join(tried, ", "), installHint())
}

// installHint is the command that installs the server binaries here.
func installHint() string {
	switch runtime.GOOS {
	case "darwin":
		return "brew install postgresql@16"
	case "linux":
		return "sudo apt-get install -y postgresql (Debian/Ubuntu)"
	}
	return "sudo apt-get install -y postgresql (Debian/Ubuntu) or brew install postgresql@16 (macOS)"
}

// hasServer tells whether dir holds every server binary.
func hasServer(dir string) bool {
	for _, name := range serverBinaries {
		if !isExecutable(filepath.Join(dir, name)) {
			return false
		}
	}
	return true
}

// lookPath finds an executable name in the directories of path (a PATH
// value), or returns "".
func lookPath(name, path string) string {
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			continue // an empty entry means ".", which we do not search
		}
		if p := filepath.Join(dir, name); isExecutable(p) {
			return p
		}
	}
	return ""
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// versionLess orders paths by the numbers in them, so that
// /usr/lib/postgresql/9.6/bin < /usr/lib/postgresql/16/bin and
// postgresql@14 < postgresql@17. A path without a number sorts first.
func versionLess(a, b string) bool {
	na, nb := numbers(a), numbers(b)
	for i := 0; i < len(na) && i < len(nb); i++ {
		if na[i] != nb[i] {
			return na[i] < nb[i]
		}
	}
	if len(na) != len(nb) {
		return len(na) < len(nb)
	}
	return a < b
}

func numbers(s string) []int {
	var ns []int
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r < '0' || r > '9' }) {
		if n, err := strconv.Atoi(f); err == nil {
			ns = append(ns, n)
		}
	}
	return ns
}

// BinDir returns the directory of the PostgreSQL binaries Start would run,
// or an error wrapping ErrNoPostgres that says what to install.
func BinDir(ctx context.Context) (string, error) { return defaultSearch().binDir(ctx) }
