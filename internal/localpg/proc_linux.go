package localpg

import "syscall"

// setDeathSignal makes the kernel send the postmaster SIGQUIT (its
// immediate shutdown) when the thread that started it exits, which Start
// arranges to be when this process dies.
func setDeathSignal(a *syscall.SysProcAttr) { a.Pdeathsig = syscall.SIGQUIT }
