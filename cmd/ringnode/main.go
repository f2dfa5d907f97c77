// Command ringnode shows leasering at work against a PostgreSQL server.
//
//	ringnode demo     a 5-node cluster in one process, put through a join,
//	                  a crash, a network blackhole and a graceful leave
//	ringnode run      one node; run it in several terminals and watch
//	ringnode status   the leasering schemas in a database: rings, members,
//	                  partitions and leases
//	ringnode help     the commands; ringnode <command> -h gives its flags
//
// Without a command, ringnode prints the list of commands and runs none.
// The database comes from -dsn, else DATABASE_URL, else the local server
// as user postgres with no password. Help and connection errors never show
// a password: they print postgres://user:***@host/db.
package main

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/lib/pq"
)

// defaultDSN is used when neither -dsn nor DATABASE_URL gives one. It names
// no password.
const defaultDSN = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// Exit codes.
const (
	exitOK    = 0
	exitError = 1 // the command failed
	exitUsage = 2 // bad command line
)

type command struct {
	name    string
	summary string // one line in the command list
	run     func(args []string, stdout, stderr io.Writer) int
}

// commands in the order help lists them. help itself is handled by cli.
var commands = []command{
	{"demo", "a 5-node cluster in one process through a join, a crash, a blackhole and a leave (recreates schema " + demoSchema + ")", demoCmd},
	{"run", "one node of a ring; start it in several terminals and watch", runCmd},
	{"status", "the leasering schemas in the database: rings, members, partitions, leases", statusCmd},
}

func main() {
	os.Exit(cli(os.Args[1:], os.Stdout, os.Stderr))
}

// cli runs ringnode with args (without the program name) and returns the
// exit code: 0 on success and for help, 1 when a command fails, 2 for a bad
// command line.
func cli(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stdout)
		return exitOK
	}
	switch name := args[0]; name {
	case "help", "-h", "-help", "--help":
		if name == "help" && len(args) > 1 {
			if c, ok := lookup(args[1]); ok {
				return c.run([]string{"-h"}, stdout, stderr)
			}
			fmt.Fprintf(stderr, "ringnode help: unknown command %q; the commands are %s\n", args[1], commandNames())
			return exitUsage
		}
		usage(stdout)
		return exitOK
	default:
		c, ok := lookup(name)
		if !ok {
			fmt.Fprintf(stderr, "ringnode: unknown command %q; the commands are %s\n\n", name, commandNames())
			usage(stderr)
			return exitUsage
		}
		return c.run(args[1:], stdout, stderr)
	}
}

func lookup(name string) (command, bool) {
	for _, c := range commands {
		if c.name == name {
			return c, true
		}
	}
	return command{}, false
}

func commandNames() string {
	names := make([]string, 0, len(commands)+1)
	for _, c := range commands {
		names = append(names, c.name)
	}
	return strings.Join(append(names, "help"), ", ")
}

// usage prints the command list.
func usage(w io.Writer) {
	fmt.Fprintln(w, "ringnode shows leasering at work against a PostgreSQL server.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "usage: ringnode <command> [flags]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "commands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-7s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "  %-7s %s\n", "help", "this list; ringnode help <command>, or ringnode <command> -h, shows a command's flags")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "The database is -dsn, else $DATABASE_URL. Without either, demo starts a private")
	fmt.Fprintln(w, "throwaway PostgreSQL from the local binaries and removes it at the end; run and")
	fmt.Fprintf(w, "status, which need a server shared by several processes, use %s\n", defaultDSN)
	fmt.Fprintln(w, "and say so (user postgres, no password: give one in -dsn or DATABASE_URL if the server asks).")
	if env := os.Getenv("DATABASE_URL"); env != "" {
		fmt.Fprintf(w, "DATABASE_URL is set: %s\n", redact(env))
	}
}

// newFlagSet returns the flag set of one command. Its Usage prints the
// command's synopsis, about and flags, and nothing of other commands.
func newFlagSet(name, about string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "usage: ringnode %s [flags]\n\n%s\n\nflags:\n", name, about)
		fs.PrintDefaults()
	}
	return fs
}

// parse parses a command's flags. done is true when the command must stop
// with code: 0 after -h (help on stdout), 2 after a bad flag or a stray
// argument (the error and the help on stderr).
func parse(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) (code int, done bool) {
	own := fs.Usage
	fs.Usage = func() {} // printed below, on the stream that fits
	fs.SetOutput(stderr) // the flag package's own error message
	err := fs.Parse(args)
	fs.Usage = own
	switch {
	case errors.Is(err, flag.ErrHelp):
		fs.SetOutput(stdout)
		fs.Usage()
		return exitOK, true
	case err != nil:
		fmt.Fprintln(stderr)
		fs.Usage()
		return exitUsage, true
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "ringnode %s: unexpected argument %q: this command takes flags only\n\n", fs.Name(), fs.Arg(0))
		fs.Usage()
		return exitUsage, true
	}
	return exitOK, false
}

// usageError reports a flag whose value is out of range: exit code 2.
func usageError(stderr io.Writer, cmd string, err error) int {
	fmt.Fprintf(stderr, "ringnode %s: %v\n", cmd, err)
	return exitUsage
}

// failed reports a command that failed: exit code 1.
func failed(stderr io.Writer, cmd string, err error) int {
	fmt.Fprintf(stderr, "ringnode %s: %v\n", cmd, err)
	return exitError
}

// dsnValue is the -dsn flag. Its String, which the flag package shows as
// the default in help, hides the password.
type dsnValue struct{ dsn string }

func (v *dsnValue) String() string {
	if v == nil {
		return ""
	}
	return redact(v.dsn)
}

func (v *dsnValue) Set(s string) error { v.dsn = s; return nil }

// dsnFlag adds -dsn to fs.
func dsnFlag(fs *flag.FlagSet) *dsnValue {
	v := &dsnValue{dsn: os.Getenv("DATABASE_URL")}
	fs.Var(v, "dsn", "PostgreSQL connection `string`, a URL or key=value pairs (default $DATABASE_URL; passwords show as ***)")
	return v
}

// sharedDSN is the DSN of run and status: -dsn or DATABASE_URL, else the
// local server, which they announce on stderr.
func sharedDSN(v *dsnValue, stderr io.Writer) string {
	if v.dsn != "" {
		return v.dsn
	}
	fmt.Fprintf(stderr, "ringnode: no -dsn and no DATABASE_URL: using the local server, %s\n", defaultDSN)
	return defaultDSN
}

// redact hides the password of a connection string: the password of a URL's
// user (postgres://user:***@host/db), a password query parameter, and a
// password=... pair of a key=value string. A string that cannot be read as
// either is hidden whole, since where its password is cannot be told.
func redact(dsn string) string {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		return redactURL(dsn)
	}
	return redactKeyValue(dsn)
}

const redacted = "***"

func unreadable(what string) string { return "(a " + what + " that does not parse; not shown)" }

func redactURL(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		return unreadable("connection URL")
	}
	// What follows the user info must hold no '@' and no '#': either one
	// means a password with a '/', '?' or '#' that the URL parser read as
	// the host, path or query.
	rest := dsn[len(u.Scheme)+len("://"):]
	if u.User != nil {
		authority := rest
		if i := strings.IndexAny(rest, "/?#"); i >= 0 {
			authority = rest[:i]
		}
		rest = rest[strings.LastIndex(authority, "@")+1:]
	}
	if strings.ContainsAny(rest, "@#") {
		return unreadable("connection URL")
	}
	var b strings.Builder
	b.WriteString(u.Scheme + "://")
	if u.User != nil {
		b.WriteString(url.User(u.User.Username()).String())
		if _, ok := u.User.Password(); ok {
			b.WriteString(":" + redacted)
		}
		b.WriteByte('@')
	}
	host, query, _ := strings.Cut(rest, "?")
	b.WriteString(host)
	if strings.Contains(rest, "?") {
		params := strings.Split(query, "&")
		for i, p := range params {
			k, _, ok := strings.Cut(p, "=")
			if key, err := url.QueryUnescape(k); ok && (err != nil || key == "password") {
				params[i] = k + "=" + redacted
			}
		}
		b.WriteString("?" + strings.Join(params, "&"))
	}
	return b.String()
}

// redactKeyValue reads libpq's key=value form: pairs separated by white
// space, spaces allowed around '=', a value either bare or in single quotes,
// with backslash escapes in both.
func redactKeyValue(dsn string) string {
	var b strings.Builder
	s := dsn
	space := func() {
		t := strings.TrimLeft(s, " \t\n\r\f\v")
		b.WriteString(s[:len(s)-len(t)])
		s = t
	}
	for {
		space()
		if s == "" {
			return b.String()
		}
		k := strings.IndexAny(s, "= \t\n\r\f\v")
		if k <= 0 {
			return unreadable("connection string")
		}
		key := s[:k]
		b.WriteString(key)
		s = s[k:]
		space()
		if !strings.HasPrefix(s, "=") {
			return unreadable("connection string")
		}
		b.WriteByte('=')
		s = s[1:]
		space()
		n, ok := valueLen(s)
		if !ok {
			return unreadable("connection string")
		}
		if key == "password" {
			b.WriteString(redacted)
		} else {
			b.WriteString(s[:n])
		}
		s = s[n:]
	}
}

// valueLen returns the length of the value at the head of s.
func valueLen(s string) (int, bool) {
	if strings.HasPrefix(s, "'") {
		for i := 1; i < len(s); i++ {
			switch s[i] {
			case '\\':
				i++
			case '\'':
				return i + 1, true
			}
		}
		return 0, false // no closing quote
	}
	i := 0
	for i < len(s) && !strings.ContainsRune(" \t\n\r\f\v", rune(s[i])) {
		if s[i] == '\\' {
			i++
		}
		i++
	}
	return min(i, len(s)), true
}

// openDB opens dsn and checks that a server answers and lets us in.
func openDB(dsn string) (*sql.DB, error) {
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		return nil, fmt.Errorf("connection string %s: %w", redact(dsn), err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, explainConnectError(dsn, err)
	}
	return db, nil
}

// explainConnectError says which of refused, a wrong password, a role not
// let in or a missing database kept us out, and what to do about it.
func explainConnectError(dsn string, err error) error {
	at := redact(dsn)
	var pqErr *pq.Error
	if errors.As(err, &pqErr) {
		// By SQLSTATE alone: 28000 covers a missing role, a role without
		// LOGIN and a pg_hba.conf that refuses it; the server's message
		// (in err) says which.
		switch {
		case pqErr.Code == "28P01":
			return fmt.Errorf("PostgreSQL at %s refused the password (%v): put the right one in -dsn or DATABASE_URL (postgres://user:password@host/db)", at, err)
		case pqErr.Code == "28000":
			return fmt.Errorf("PostgreSQL at %s does not let this role in (%v): name an existing user in -dsn or create it (createuser --createdb NAME), "+
				"and check its LOGIN right and pg_hba.conf", at, err)
		case pqErr.Code == "3D000":
			return fmt.Errorf("PostgreSQL at %s has no such database (%v): name an existing one in -dsn, or create it (createdb NAME)", at, err)
		}
		return fmt.Errorf("PostgreSQL at %s refused us (%v)", at, err)
	}
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("nothing listens at %s (%v): start PostgreSQL there, pass another -dsn, or run the demo without -dsn and DATABASE_URL to let it start a private server", at, err)
	}
	return fmt.Errorf("no PostgreSQL answers at %s (%v): check the host and port in -dsn or DATABASE_URL", at, err)
}
func logger(verbose bool, stderr io.Writer) *slog.Logger {
	if !verbose {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// compact writes sorted partitions as ranges: 0-3,7,9-10.
func compact(ps []int) string {
	var b strings.Builder
	for i := 0; i < len(ps); {
		j := i
		for j+1 < len(ps) && ps[j+1] == ps[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		if j > i {
			fmt.Fprintf(&b, "%d-%d", ps[i], ps[j])
		} else {
			fmt.Fprintf(&b, "%d", ps[i])
		}
		i = j + 1
	}
	return b.String()
}

var errNotConverged = errors.New("did not converge")
