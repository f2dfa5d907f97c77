package main

import (
	"regexp"
	"strings"
	"testing"
)

// A bare ringnode, -h, --help and help print the command list, one line
// each, on stdout and exit 0. A bare ringnode runs nothing: DATABASE_URL
// points where no server listens, so a demo would fail.
func TestHelpListsCommands(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none?sslmode=disable&connect_timeout=1")
	for _, args := range [][]string{{}, {"-h"}, {"-help"}, {"--help"}, {"help"}} {
		code, out, errOut := run(t, args...)
		if code != 0 || errOut != "" {
			t.Errorf("ringnode %v: exit %d, stderr %q; want 0 and nothing", args, code, errOut)
		}
		for _, name := range []string{"demo", "run", "status", "help"} {
			lines := regexp.MustCompile(`(?m)^  `+name+` +\S.*$`).FindAllString(out, -1)
			if len(lines) != 1 {
				t.Errorf("ringnode %v: %d lines for command %s, want 1:\n%s", args, len(lines), name, out)
			}
		}
		if strings.Contains(out, "leasering demo:") || strings.Contains(out, "no PostgreSQL") {
			t.Errorf("ringnode %v ran something:\n%s", args, out)
		}
	}
}

func TestUnknownCommand(t *testing.T) {
	for _, args := range [][]string{{"bogus"}, {"-dsn", "x"}, {"help", "bogus"}} {
		code, out, errOut := run(t, args...)
		if code != 2 || out != "" || !strings.Contains(errOut, "unknown command") || !strings.Contains(errOut, "demo, run, status, help") {
			t.Errorf("ringnode %v: exit %d, stdout %q, stderr %q; want 2 and an error naming the command and the ones there are", args, code, out, errOut)
		}
	}
}

// Each command's -h (and ringnode help <command>) prints that command's
// flags and no other command's, on stdout, and exits 0.
func TestCommandHelpShowsOnlyItsFlags(t *testing.T) {
	flags := map[string][]string{
		"demo":   {"-dsn", "-size", "-ttl", "-v"},
		"run":    {"-dsn", "-id", "-ring", "-size", "-vnodes", "-ttl", "-crash", "-notify", "-plain", "-v"},
		"status": {"-dsn", "-schema"},
	}
	all := map[string]bool{}
	for _, fs := range flags {
		for _, f := range fs {
			all[f] = true
		}
	}
	for cmd, want := range flags {
		for _, args := range [][]string{{cmd, "-h"}, {cmd, "--help"}, {"help", cmd}} {
			code, out, errOut := run(t, args...)
			if code != 0 || errOut != "" {
				t.Errorf("ringnode %v: exit %d, stderr %q; want 0 and nothing", args, code, errOut)
			}
			if !strings.HasPrefix(out, "usage: ringnode "+cmd+" [flags]") {
				t.Errorf("ringnode %v does not start with its usage line:\n%s", args, out)
			}
			shown := map[string]bool{}
			for _, m := range regexp.MustCompile(`(?m)^  (-\w+)`).FindAllStringSubmatch(out, -1) {
				shown[m[1]] = true
			}
			for f := range all {
				if mine := contains(want, f); shown[f] != mine {
					t.Errorf("ringnode %v: flag %s shown %v, want %v:\n%s", args, f, shown[f], mine, out)
				}
			}
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// The help of demo and run says why their TTL is not the library's.
func TestHelpExplainsTTL(t *testing.T) {
	for cmd, ttl := range map[string]string{"demo": "2s", "run": "5s"} {
		_, out, _ := run(t, cmd, "-h")
		if !strings.Contains(out, "defaults to "+ttl+", not the library's 10s (leasering.DefaultTTL)") ||
			!strings.Contains(out, `(default `+ttl+`)`) {
			t.Errorf("ringnode %s -h does not explain its TTL of %s:\n%s", cmd, ttl, out)
		}
	}
}

// A bad flag, a stray argument or an out-of-range value exits 2 with an
// error naming it on stderr, before any I/O.
func TestBadFlags(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none?sslmode=disable&connect_timeout=1")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"demo", "-nope"}, "flag provided but not defined: -nope"},
		{[]string{"status", "-size", "3"}, "flag provided but not defined: -size"},
		{[]string{"run", "-ttl", "soon"}, `invalid value "soon" for flag -ttl`},
		{[]string{"status", "extra"}, `unexpected argument "extra"`},
		{[]string{"demo", "-size", "0"}, "-size 0 is outside 1..65536"},
		{[]string{"demo", "-ttl", "10ms"}, "-ttl 10ms is below the minimum 100ms"},
		{[]string{"run", "-vnodes", "300"}, "-vnodes 300 is outside 1..256"},
	} {
		code, out, errOut := run(t, tc.args...)
		if code != 2 || out != "" || !strings.Contains(errOut, tc.want) {
			t.Errorf("ringnode %v: exit %d, stdout %q, stderr %q; want 2 and %q", tc.args, code, out, errOut, tc.want)
		}
	}
}

func TestRedact(t *testing.T) {
	hidden := "(a connection URL that does not parse; not shown)"
	for _, tc := range []struct{ in, want string }{
		{"postgres://user:s3cret@db.example:5432/app?sslmode=require", "postgres://user:***@db.example:5432/app?sslmode=require"},
		{"postgresql://user:s3cret@db.example/app", "postgresql://user:***@db.example/app"},
		{"postgres://user@db.example/app", "postgres://user@db.example/app"},
		{"postgres://db.example/app", "postgres://db.example/app"},
		{"postgres://user:p%40ss@db.example/app", "postgres://user:***@db.example/app"},
		{"postgres://user:p@ss@db.example/app", "postgres://user:***@db.example/app"},
		{"postgres://user:@db.example/app", "postgres://user:***@db.example/app"},
		{"postgres://db.example/app?user=u&password=s3cret&sslmode=disable", "postgres://db.example/app?user=u&password=***&sslmode=disable"},
		{"postgres://db.example/app?pass%77ord=s3cret", "postgres://db.example/app?pass%77ord=***"},
		// A password with '/', '?' or '#' left unescaped: the URL parser
		// reads part of it as host, path, query or fragment.
		{"postgres://user:12/34@db.example/app", hidden},
		{"postgres://user:12?34@db.example/app", hidden},
		{"postgres://user:12#34@db.example/app", hidden},
		{"postgres://user:s3/cret@db.example/app", hidden},
		{"postgres://user:s3cret@db.example/app#x", hidden},
		{"host=db.example user=u password=s3cret dbname=app", "host=db.example user=u password=*** dbname=app"},
		{"host=db.example password = s3cret", "host=db.example password = ***"},
		{"password='s3 cr\\'et' host=db.example", "password=*** host=db.example"},
		{"password=s3\\ cret host=db.example", "password=*** host=db.example"},
		{"host=db.example user=u", "host=db.example user=u"},
		{"", ""},
		{"host=db.example password='s3cret", "(a connection string that does not parse; not shown)"},
		{"s3cret", "(a connection string that does not parse; not shown)"},
		{"mysql://user:s3cret@db.example/app", "(a connection string that does not parse; not shown)"},
	} {
		if got := redact(tc.in); got != tc.want {
			t.Errorf("redact(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if strings.Contains(redact(tc.in), "cret") || strings.Contains(redact(tc.in), "34") {
			t.Errorf("redact(%q) = %q shows the password", tc.in, redact(tc.in))
		}
	}
}

// No help text shows the password in DATABASE_URL, whichever form it has.
func TestHelpHidesPassword(t *testing.T) {
	for _, env := range []string{
		"postgres://app:s3cret@db.example:5432/app?sslmode=disable",
		"postgres://app@db.example/app?password=s3cret",
		"host=db.example user=app password=s3cret",
		"postgres://app:s3/cret@db.example/app",
	} {
		t.Setenv("DATABASE_URL", env)
		for _, args := range [][]string{{}, {"help"}, {"demo", "-h"}, {"run", "-h"}, {"status", "-h"}, {"help", "status"}, {"status", "-nope"}} {
			code, out, errOut := run(t, args...)
			if strings.Contains(out+errOut, "s3") {
				t.Errorf("DATABASE_URL=%q: ringnode %v (exit %d) shows the password:\n%s%s", env, args, code, out, errOut)
			}
		}
		if _, out, _ := run(t, "status", "-h"); !strings.Contains(out, "***") && !strings.Contains(out, "not shown") {
			t.Errorf("DATABASE_URL=%q: status -h shows no redacted default:\n%s", env, out)
		}
	}
}

// A connection error names the server with the password hidden.
func TestConnectionErrorHidesPassword(t *testing.T) {
	for _, tc := range []struct{ dsn, want string }{
		{"postgres://app:s3cret@127.0.0.1:1/app?sslmode=disable&connect_timeout=2", "postgres://app:***@127.0.0.1:1/app"},
		{"host=127.0.0.1 port=1 user=app password=s3cret sslmode=disable connect_timeout=2", "password=*** sslmode=disable"},
	} {
		for _, args := range [][]string{{"status", "-dsn", tc.dsn}, {"demo", "-dsn", tc.dsn}} {
			code, out, errOut := run(t, args...)
			if code != 1 || !strings.Contains(errOut, tc.want) || strings.Contains(out+errOut, "s3cret") {
				t.Errorf("ringnode %v: exit %d, stdout %q, stderr %q; want 1 and an error naming %s", args, code, out, errOut, tc.want)
			}
		}
		t.Setenv("DATABASE_URL", tc.dsn)
		code, out, errOut := run(t, "status")
		if code != 1 || !strings.Contains(errOut, tc.want) || strings.Contains(out+errOut, "s3cret") {
			t.Errorf("DATABASE_URL=%q ringnode status: exit %d, stdout %q, stderr %q; want 1 and an error naming %s", tc.dsn, code, out, errOut, tc.want)
		}
	}
}
