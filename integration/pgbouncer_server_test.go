package integration

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The PgBouncer the tests run nodes behind: its binary, config, process and admin console.

// pgBouncer is a PgBouncer of the test's own, in front of the test server.
type pgBouncer struct {
	addr     string // 127.0.0.1:port
	dir      string // its configuration and log
	mode     string
	poolSize int
}

// bouncerConfig is what a test chooses of a PgBouncer's settings.
type bouncerConfig struct {
	mode       string   // pool_mode: session, transaction or statement
	poolSize   int      // default_pool_size: server connections per database and user
	roundRobin bool     // server_round_robin: hand out the idle server connection used least recently
	users      []string // more roles it lets in, without a password (the test DSN's user is in)
}

// pgBouncerBinary finds the pgbouncer binary: on PATH, or where Debian
// puts it (/usr/sbin, which a user's PATH may lack). Without one the test
// fails under LEASERING_REQUIRE_DB=1 and skips otherwise.
func pgBouncerBinary(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("pgbouncer"); err == nil {
		return p
	}
	for _, p := range []string{"/usr/sbin/pgbouncer", "/usr/local/sbin/pgbouncer", "/usr/local/bin/pgbouncer"} {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	if os.Getenv("LEASERING_REQUIRE_DB") == "1" {
		t.Fatal("pgbouncer is not installed and LEASERING_REQUIRE_DB=1: install it (apt-get install -y pgbouncer)")
	}
	skip(t, "pgbouncer is not installed (apt-get install -y pgbouncer)")
	return ""
}

// lockedBuffer collects a child's output for failure messages.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// startPgBouncer runs a PgBouncer on a free port of 127.0.0.1 that sends
// every database to the test server, with trust authentication for its
// clients, and stops it at the end of the test. As root it runs as the OS
// user postgres (pgbouncer refuses root). Start it before newEnv, so that
// it stops after the nodes have left.
func startPgBouncer(t testing.TB, cfg bouncerConfig) *pgBouncer {
	t.Helper()
	bin := pgBouncerBinary(t)
	server, err := url.Parse(needDB(t))
	if err != nil {
		t.Fatalf("parsing the test DSN: %v", err)
	}
	host, port := server.Hostname(), server.Port()
	if host == "" {
		host = "127.0.0.1"
	}
	if port == "" {
		port = "5432"
	}
	name, password := "postgres", ""
	if server.User != nil {
		name = server.User.Username()
		password, _ = server.User.Password()
	}
	if cfg.poolSize == 0 {
		cfg.poolSize = 20
	}

	dir, err := os.MkdirTemp("", "leasering-pgbouncer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	var args []string
	owner := -1
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("pgbouncer refuses to run as root and there is no OS user postgres to run it as: %v", err)
		}
		owner, _ = strconv.Atoi(u.Uid)
		args = append(args, "-u", u.Username)
	}
	write := func(file, text string) {
		p := filepath.Join(dir, file)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		if owner >= 0 {
			if err := os.Chown(p, owner, -1); err != nil {
				t.Fatal(err)
			}
		}
	}
	if owner >= 0 {
		if err := os.Chown(dir, owner, -1); err != nil {
			t.Fatal(err)
		}
	}
	users := fmt.Sprintf("%q %q\n", name, password)
	for _, u := range cfg.users {
		users += fmt.Sprintf("%q \"\"\n", u)
	}
	write("userlist.txt", users)
	write("pgbouncer.log", "")

	// A port free a moment ago may be taken before pgbouncer binds it: then
	// try another.
	for try := 1; ; try++ {
		addr := freeAddr(t)
		_, p, _ := net.SplitHostPort(addr)
		write("pgbouncer.ini", fmt.Sprintf(`[databases]
* = host=%s port=%s

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %s
unix_socket_dir =
auth_type = trust
auth_file = %s
admin_users = %s
pool_mode = %s
default_pool_size = %d
max_client_conn = 1000
server_round_robin = %d
ignore_startup_parameters = extra_float_digits
logfile = %s
`, host, port, p, filepath.Join(dir, "userlist.txt"), name, cfg.mode, cfg.poolSize,
			map[bool]int{false: 0, true: 1}[cfg.roundRobin], filepath.Join(dir, "pgbouncer.log")))
		out := &lockedBuffer{}
		cmd := exec.Command(bin, append(args, filepath.Join(dir, "pgbouncer.ini"))...)
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatalf("starting pgbouncer: %v", err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		b := &pgBouncer{addr: addr, dir: dir, mode: cfg.mode, poolSize: cfg.poolSize}
		err := b.waitReady(exited, 10*time.Second)
		if err == nil {
			t.Cleanup(func() { b.stop(t, cmd, exited) })
			return b
		}
		select {
		case <-exited:
		default:
			_ = cmd.Process.Kill()
			<-exited
		}
		logText, _ := os.ReadFile(filepath.Join(dir, "pgbouncer.log"))
		if try < 3 && strings.Contains(string(logText)+out.String(), "Address already in use") {
			continue
		}
		t.Fatalf("pgbouncer on %s: %v\n%s%s", addr, err, out.String(), logText)
	}
}

// freeAddr returns an address on 127.0.0.1 that was free a moment ago.
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}

// waitReady waits until a query goes through the bouncer to the server.
func (b *pgBouncer) waitReady(exited <-chan error, within time.Duration) error {
	db, err := sql.Open("postgres", b.dsn())
	if err != nil {
		return err
	}
	defer db.Close()
	deadline := time.Now().Add(within)
	for {
		select {
		case err := <-exited:
			return fmt.Errorf("pgbouncer exited: %v", err)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		var one int
		err := db.QueryRowContext(ctx, "SELECT 1").Scan(&one)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no answer within %v: %v", within, err)
		}
		time.Sleep(20 * time.Millisecond) // polling interval
	}
}

// stop shuts the bouncer down (SIGTERM: at once, dropping its clients)
// and waits for it to exit.
func (b *pgBouncer) stop(t testing.TB, cmd *exec.Cmd, exited <-chan error) {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
		t.Errorf("pgbouncer did not exit within 10s of SIGTERM; killed")
	}
}

// dsn is the test DSN pointed at the bouncer, with params (name, value
// pairs) added.
func (b *pgBouncer) dsn(params ...string) string {
	u, _ := url.Parse(testDSN)
	u.Host = b.addr
	q := u.Query()
	for i := 0; i+1 < len(params); i += 2 {
		q.Set(params[i], params[i+1])
	}
	u.RawQuery = strings.ReplaceAll(q.Encode(), "+", "%20")
	return u.String()
}

// connections counts the bouncer's client and server connections to the
// test's database, from its admin console (SHOW CLIENTS, SHOW SERVERS).
func (b *pgBouncer) connections(t testing.TB) (clients, servers int) {
	t.Helper()
	u, _ := url.Parse(testDSN)
	database := strings.TrimPrefix(u.Path, "/")
	db := openDBWith(t, "postgres", dsnWith(t, b.dsn(), "", "pgbouncer"))
	defer db.Close()
	count := func(what string) int {
		rows, err := db.Query("SHOW " + what) // the console speaks only the simple protocol: no arguments
		if err != nil {
			t.Fatalf("SHOW %s: %v", what, err)
		}
		defer rows.Close()
		cols, _ := rows.Columns()
		n := 0
		for rows.Next() {
			vals := make([]sql.RawBytes, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				t.Fatalf("SHOW %s: %v", what, err)
			}
			for i, c := range cols {
				if c == "database" && string(vals[i]) == database {
					n++
				}
			}
		}
		if err := rows.Err(); err != nil {
			t.Fatalf("SHOW %s: %v", what, err)
		}
		return n
	}
	return count("CLIENTS"), count("SERVERS")
}
