package leasering

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// forbiddenModules are substrings of module paths that a module depending
// on leasering must never pull in: the integration tests' Docker harness
// (dockertest and what it drags along), pgx and a SQL mock. They live in
// nested modules (integration/, pgxnotify/); the unit tests' fake driver
// is internal/fakesql. lib/pq is allowed: cmd/ringnode, part of the root
// module, opens its connections with it (rootRequirements).
var forbiddenModules = []string{"docker", "dockertest", "runc", "logrus", "moby", "containerd", "pgx", "sqlmock"}

// rootRequirements is all the root go.mod may require: the driver of the
// demo (cmd/ringnode) and of the examples.
var rootRequirements = map[string]bool{"github.com/lib/pq": true}

// nestedModulePrefix starts the path of every nested module (pqnotify,
// pgxnotify, prometheus, bench, integration). Each requires the root; the
// root must require none of them, or a depender would need versions of
// them that only a replace directive in this repository provides.
const nestedModulePrefix = "github.com/leasering/leasering/"

func forbiddenModule(path string) (string, bool) {
	if strings.HasPrefix(path, nestedModulePrefix) {
		return nestedModulePrefix, true
	}
	for _, f := range forbiddenModules {
		if strings.Contains(strings.ToLower(path), f) {
			return f, true
		}
	}
	return "", false
}

// goModRequirements returns the module paths required by the go.mod text,
// read line by line (the root module may not depend on golang.org/x/mod).
func goModRequirements(t *testing.T, data []byte) []string {
	t.Helper()
	var reqs []string
	inBlock := false
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := sc.Text()
		if i := strings.Index(line, "//"); i >= 0 {
			line = line[:i]
		}
		fields := strings.Fields(line)
		switch {
		case len(fields) == 0:
		case inBlock && fields[0] == ")":
			inBlock = false
		case inBlock:
			reqs = append(reqs, fields[0])
		case fields[0] == "require" && len(fields) >= 2 && fields[1] == "(":
			inBlock = true
		case fields[0] == "require" && len(fields) >= 2:
			reqs = append(reqs, fields[1])
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return reqs
}

func TestGoModRequirementsParse(t *testing.T) {
	got := goModRequirements(t, []byte(`module m

go 1.24

require a.example/one v1.0.0 // comment
require (
	b.example/two v0.1.0
	c.example/three v0.2.0 // indirect
)
replace x => ../
`))
	want := []string{"a.example/one", "b.example/two", "c.example/three"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("requirements = %v, want %v", got, want)
	}
}

func TestForbiddenModule(t *testing.T) {
	for path, want := range map[string]bool{
		"github.com/leasering/leasering":           false,
		"github.com/lib/pq":                        false,
		"github.com/DATA-DOG/go-sqlmock":           true,
		"github.com/leasering/leasering/pqnotify":  true,
		"github.com/leasering/leasering/pgxnotify": true,
		"github.com/jackc/pgx/v5":                  true,
		"github.com/ory/dockertest/v3":             true,
	} {
		if _, got := forbiddenModule(path); got != want {
			t.Errorf("forbiddenModule(%q) = %v, want %v", path, got, want)
		}
	}
}

// TestRootGoModHasNoTestHarnessModules fails if the root go.mod requires
// any module but rootRequirements: everything a depender's module graph
// gets from leasering is listed there.
func TestRootGoModHasNoTestHarnessModules(t *testing.T) {
	data, err := os.ReadFile("go.mod")
	if err != nil {
		t.Fatal(err)
	}
	reqs := goModRequirements(t, data)
	if len(reqs) == 0 {
		t.Fatal("no requirements parsed from go.mod")
	}
	for _, r := range reqs {
		if f, bad := forbiddenModule(r); bad {
			t.Errorf("go.mod requires %s (matches %q): it must stay out of a depender's module graph", r, f)
		} else if !rootRequirements[r] {
			t.Errorf("go.mod requires %s: the root module requires only %v (test dependencies go in a nested module)", r, rootRequirements)
		}
	}
}

// TestDependerModuleGraph makes a scratch module that requires leasering
// (replaced by this checkout) and checks that `go list -m all` names no
// test-harness module. It runs offline (GOPROXY=off): the modules it needs
// are the ones this package's tests were built with.
func TestDependerModuleGraph(t *testing.T) {
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go command not available")
	}
	root, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	gomod := "module example.com/depender\n\ngo 1.24\n\n" +
		"require github.com/leasering/leasering v0.0.0\n\n" +
		"replace github.com/leasering/leasering => " + root + "\n"
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte(gomod), 0o644); err != nil {
		t.Fatal(err)
	}
	// The root's go.sum holds the checksums of everything the library
	// requires, so nothing needs the checksum database.
	sum, err := os.ReadFile("go.sum")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "go.sum"), sum, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(goCmd, "list", "-m", "all")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOPROXY=off", "GOWORK=off", "GOTOOLCHAIN=local", "GOSUMDB=off")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go list -m all: %v\n%s", err, out)
	}
	var mods []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if fields := strings.Fields(line); len(fields) > 0 {
			mods = append(mods, fields[0])
		}
	}
	if len(mods) < 2 || mods[0] != "example.com/depender" {
		t.Fatalf("unexpected go list output:\n%s", out)
	}
	found := false
	for _, m := range mods {
		if m == "github.com/leasering/leasering" {
			found = true
		}
		if f, bad := forbiddenModule(m); bad {
			t.Errorf("a module depending on leasering lists %s (matches %q)", m, f)
		}
	}
	if !found {
		t.Fatalf("go list -m all does not list github.com/leasering/leasering:\n%s", out)
	}
	t.Logf("depender's module graph: %s", strings.Join(mods, " "))
}
