//go:build !linux && !darwin

package localpg

import (
	"errors"
	"os"
	"syscall"
)

// Private clusters are made on Linux and macOS only; elsewhere Start fails
// (Find still returns an explicit DSN or a Docker server).
const supported = false

var errUnsupported = errors.New("localpg: not supported on this system")

func serverUser() (runAs, error)                { return runAs{}, errUnsupported }
func procAttr(runAs, bool) *syscall.SysProcAttr { return nil }
func quit(p *os.Process) error                  { return p.Kill() }
func fastShutdown(p *os.Process) error          { return p.Kill() }
func killGroup(int)                             {}
func pidAlive(int) bool                         { return true }
func lockFile(*os.File) error                   { return errUnsupported }
func tryLockFile(*os.File) bool                 { return false }
