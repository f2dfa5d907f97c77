package localpg

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
)

// pgError is an ErrorResponse from the server.
type pgError struct {
	Severity, Code, Message string
}

func (e *pgError) Error() string {
	return fmt.Sprintf("%s: %s (SQLSTATE %s)", e.Severity, e.Message, e.Code)
}

// cannotConnectNow is the SQLSTATE of "the database system is starting up".
const cannotConnectNow = "57P03"

// execSQL connects to addr over TCP as user to database, without password
// (the trust method), runs query with the simple query protocol and
// disconnects. It is just enough of the protocol to check that the server
// takes connections and to create a database, without a driver.
func execSQL(ctx context.Context, addr, user, database, query string) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()

	// StartupMessage: length, protocol 3.0, name/value pairs, terminator.
	var body bytes.Buffer
	_ = binary.Write(&body, binary.BigEndian, int32(3<<16))
	for _, s := range []string{"user", user, "database", database, ""} {
		body.WriteString(s)
		body.WriteByte(0)
	}
	if _, err := conn.Write(message(0, body.Bytes())); err != nil {
		return err
	}
	r := bufio.NewReader(conn)
	if err := readUntilReady(r); err != nil {
		return err
	}
	if _, err := conn.Write(message('Q', append([]byte(query), 0))); err != nil {
		return err
	}
	if err := readUntilReady(r); err != nil {
		return err
	}
	_, _ = conn.Write(message('X', nil))
	return nil
}

// message frames a frontend message; typ 0 means no type byte (startup).
func message(typ byte, body []byte) []byte {
	var b []byte
	if typ != 0 {
		b = append(b, typ)
	}
	b = binary.BigEndian.AppendUint32(b, uint32(4+len(body)))
	return append(b, body...)
}

// readUntilReady reads messages up to ReadyForQuery and returns the first
// ErrorResponse, if any. A FATAL error ends the connection before
// ReadyForQuery; it is returned then.
func readUntilReady(r *bufio.Reader) error {
	var first error
	for {
		var hdr [5]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			if first != nil {
				return first
			}
			return fmt.Errorf("reading from server: %w", err)
		}
		n := int(binary.BigEndian.Uint32(hdr[1:])) - 4
		if n < 0 || n > 1<<20 {
			return fmt.Errorf("bad message length %d from server", n)
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(r, body); err != nil {
			return fmt.Errorf("reading from server: %w", err)
		}
		switch hdr[0] {
		case 'R': // Authentication*
			if len(body) < 4 {
				return errors.New("short authentication message")
			}
			if m := binary.BigEndian.Uint32(body); m != 0 {
				return fmt.Errorf("server asks for authentication (method %d); only trust is supported", m)
			}
		case 'E':
			e := parseError(body)
			if e.Severity == "FATAL" || e.Severity == "PANIC" {
				return e
			}
			if first == nil {
				first = e
			}
		case 'Z':
			return first
		}
	}
}

func parseError(body []byte) *pgError {
	e := &pgError{}
	for _, f := range bytes.Split(body, []byte{0}) {
		if len(f) < 1 {
			continue
		}
		switch f[0] {
		case 'V':
			e.Severity = string(f[1:])
		case 'S':
			if e.Severity == "" {
				e.Severity = string(f[1:])
			}
		case 'C':
			e.Code = string(f[1:])
		case 'M':
			e.Message = string(f[1:])
		}
	}
	return e
}
