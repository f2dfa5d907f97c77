package localpg

import "syscall"

// setDeathSignal does nothing: macOS has no parent-death signal. A server
// whose process was killed keeps running until stopped by hand; Stop and
// StopOnSignal still work.
func setDeathSignal(*syscall.SysProcAttr) {}
