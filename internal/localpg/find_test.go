package localpg

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestFindExplicitDSN(t *testing.T) {
	ctx := context.Background()
	t.Setenv("LOCALPG_TEST_A", "")
	t.Setenv("LOCALPG_TEST_B", "postgres://b")
	docker := func(context.Context) (string, func(), error) {
		t.Error("Docker called despite an explicit DSN")
		return "", nil, nil
	}

	s, err := Find(ctx, Options{DSNEnv: []string{"LOCALPG_TEST_A", "LOCALPG_TEST_B"}, Docker: docker})
	if err != nil || s.DSN != "postgres://b" || s.Source != "dsn from $LOCALPG_TEST_B" {
		t.Errorf("env: %+v, %v", s, err)
	}
	s, err = Find(ctx, Options{DSN: "postgres://flag", DSNEnv: []string{"LOCALPG_TEST_B"}, Docker: docker})
	if err != nil || s.DSN != "postgres://flag" || s.Source != "dsn given explicitly" {
		t.Errorf("flag: %+v, %v", s, err)
	}
	if err := s.Stop(); err != nil {
		t.Errorf("Stop of an explicit DSN: %v", err)
	}
}

func TestFindDocker(t *testing.T) {
	stops := 0
	s, err := Find(context.Background(), Options{
		DSNEnv: []string{"LOCALPG_TEST_UNSET"},
		Docker: func(context.Context) (string, func(), error) {
			return "postgres://docker", func() { stops++ }, nil
		},
	})
	if err != nil || s.DSN != "postgres://docker" || !strings.HasPrefix(s.Source, "docker") || s.Cluster != nil {
		t.Fatalf("%+v, %v", s, err)
	}
	_ = s.Stop()
	_ = s.Stop()
	if stops != 1 {
		t.Errorf("container removed %d times, want 1", stops)
	}
}

// TestFindLocal: a Docker engine that fails sends Find to a private cluster.
func TestFindLocal(t *testing.T) {
	needServer(t)
	isolateTemp(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Find(ctx, Options{Docker: func(context.Context) (string, func(), error) {
		return "", nil, errors.New("pull refused")
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Log(s.Source)
	if s.Cluster == nil || s.DSN != s.Cluster.DSN ||
		!strings.HasPrefix(s.Source, "private cluster at "+s.Cluster.Dir+": ") ||
		!strings.HasSuffix(s.Source, "(docker failed: pull refused)") {
		t.Errorf("Find = %+v", s)
	}
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.Cluster.Dir); !os.IsNotExist(err) {
		t.Errorf("%s still there after Stop", s.Cluster.Dir)
	}
}

// writeScript writes an executable shell script.
func writeScript(t *testing.T, path, body string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
}

// fakeServer makes dir hold fake initdb and postgres.
func fakeServer(t *testing.T, dir string) string {
	t.Helper()
	writeScript(t, filepath.Join(dir, "initdb"), "exit 0")
	writeScript(t, filepath.Join(dir, "postgres"), "exit 0")
	return dir
}

func TestBinDirOrder(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	p := func(parts ...string) string { return filepath.Join(append([]string{root}, parts...)...) }

	// Packaged versions, found by pattern, newest first by number.
	fakeServer(t, p("lib/postgresql/9.6/bin"))
	fakeServer(t, p("lib/postgresql/15/bin"))
	writeScript(t, p("lib/postgresql/16/bin/initdb"), "exit 0") // no postgres: skipped
	fakeServer(t, p("brew/postgresql@14/bin"))
	fakeServer(t, p("brew/postgresql@17/bin"))
	globs := []string{p("lib/postgresql/*/bin"), p("brew/postgresql*/bin")}

	// A PATH directory whose initdb is a link into a directory with postgres.
	fakeServer(t, p("real/bin"))
	if err := os.MkdirAll(p("linked"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(p("real/bin/initdb"), p("linked/initdb")); err != nil {
		t.Fatal(err)
	}
	// pg_config pointing at a directory with the server.
	fakeServer(t, p("pgconfig/target"))
	writeScript(t, p("pgconfig/bin/pg_config"), "echo "+p("pgconfig/target"))
	// A PATH directory with initdb but no postgres.
	writeScript(t, p("half/initdb"), "exit 0")

	for _, tc := range []struct {
		name, path string
		globs      []string
		want       string
	}{
		{"PATH", p("real/bin"), globs, p("real/bin")},
		{"PATH before pg_config", p("pgconfig/bin") + ":" + p("real/bin"), globs, p("real/bin")},
		{"PATH link resolved", p("linked"), globs, p("real/bin")},
		{"pg_config", p("pgconfig/bin"), globs, p("pgconfig/target")},
		{"initdb without postgres skipped", p("half"), globs, p("lib/postgresql/15/bin")},
		{"newest packaged version", "", globs, p("lib/postgresql/15/bin")},
		{"patterns in order", "", globs[1:], p("brew/postgresql@17/bin")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := search{path: tc.path, globs: tc.globs}.binDir(ctx)
			if err != nil || got != tc.want {
				t.Errorf("binDir = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestNothingFound(t *testing.T) {
	empty := t.TempDir()
	s := search{path: empty, globs: []string{filepath.Join(empty, "*/bin")}}
	_, err := s.binDir(context.Background())
	if !errors.Is(err, ErrNoPostgres) {
		t.Fatalf("err = %v, want ErrNoPostgres", err)
	}
	t.Log(err)
	for _, want := range []string{"initdb and postgres", installHint(), filepath.Join(empty, "*/bin")} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if !strings.Contains(installHint(), "apt-get install -y postgresql") && !strings.Contains(installHint(), "brew install postgresql@16") {
		t.Errorf("install hint %q", installHint())
	}
	if supported {
		if _, err := start(context.Background(), s); !errors.Is(err, ErrNoPostgres) {
			t.Errorf("start: %v, want ErrNoPostgres", err)
		}
	}
}

// TestFindNothing: with no DSN, no Docker and no binaries, Find's error is
// one line that says what is missing, the command that installs it and the
// variable that names a server instead, and what Docker said.
func TestFindNothing(t *testing.T) {
	empty := t.TempDir()
	s := search{path: empty, globs: []string{filepath.Join(empty, "*/bin")}}
	t.Setenv("LOCALPG_TEST_UNSET", "")
	_, err := find(context.Background(), Options{
		DSNEnv: []string{"LOCALPG_TEST_UNSET"},
		Docker: func(context.Context) (string, func(), error) { return "", nil, errors.New("pull refused") },
	}, s)
	if !errors.Is(err, ErrNoPostgres) {
		t.Fatalf("err = %v, want ErrNoPostgres", err)
	}
	t.Log(err)
	msg := err.Error()
	if strings.Contains(msg, "\n") {
		t.Errorf("error is more than one line: %q", msg)
	}
	for _, want := range []string{"initdb and postgres", "install them with: " + installHint(),
		"or set $LOCALPG_TEST_UNSET to a server's DSN", "docker failed too: pull refused"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not say %q", msg, want)
		}
	}
}
