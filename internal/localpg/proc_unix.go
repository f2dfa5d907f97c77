//go:build linux || darwin

package localpg

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"syscall"
)

const supported = true

// serverUser returns the OS user postgres when this process is root, since
// initdb and postgres refuse to run as root.
func serverUser() (runAs, error) {
	if os.Geteuid() != 0 {
		return runAs{}, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return runAs{}, fmt.Errorf("localpg: this process is root, which initdb and postgres refuse, "+
			"and there is no OS user postgres to run them as (%v); create one with "+
			"`useradd --system postgres` (the postgresql package does) or run as another user", err)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err := errors.Join(err1, err2); err != nil {
		return runAs{}, fmt.Errorf("localpg: OS user postgres: %w", err)
	}
	return runAs{set: true, name: u.Username, uid: uid, gid: gid}, nil
}

// procAttr runs a child as u in its own process group, so that a
// terminal's Ctrl-C reaches only this process, which decides, and so that
// killGroup reaches the child's children. The server also gets, on Linux,
// a signal when this process dies.
func procAttr(u runAs, server bool) *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{Setpgid: true}
	if u.set {
		a.Credential = &syscall.Credential{Uid: uint32(u.uid), Gid: uint32(u.gid)}
	}
	if server {
		setDeathSignal(a)
	}
	return a
}

// quit asks the postmaster for an immediate shutdown.
func quit(p *os.Process) error { return p.Signal(syscall.SIGQUIT) }

// fastShutdown asks the postmaster for a fast shutdown.
func fastShutdown(p *os.Process) error { return p.Signal(syscall.SIGINT) }

// killGroup SIGKILLs the process group pgid.
func killGroup(pgid int) { _ = syscall.Kill(-pgid, syscall.SIGKILL) }

func pidAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// lockFile takes an exclusive lock on f that lasts as long as this process
// keeps f open.
func lockFile(f *os.File) error {
	return syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
}

// tryLockFile tells whether nobody holds f's lock (and takes it).
func tryLockFile(f *os.File) bool { return lockFile(f) == nil }
