// Package gdbstub is lucos's client for QEMU's gdbstub (the GDB remote serial
// protocol). It is the channel through which lucos stops and resumes the
// guest's vCPUs, reads and writes their registers and guest memory (code
// must be written through it: TCG only notices code writes that pass
// through QEMU), and sets breakpoints and write watchpoints.
//
// A Client talks to one QEMU over its -gdb socket. Connecting stops the VM;
// the client then knows at every moment whether the VM runs, because only
// it resumes it. While the VM runs QEMU treats any byte it receives as an
// interrupt and drops the packet it belonged to, so the only thing a Client
// sends then is the 0x03 of Stop; every other method returns ErrRunning.
//
// Threads are vCPUs, numbered from 1. The register layout comes from the
// target description QEMU sends (see Layout); register names are QEMU's
// (rip, eflags, cs, cr3, efer, fs_base, gs_base, k_gs_base, ...).
//
// Pauses are short and timed: Continue returns when its packet was sent,
// StopEvent.At says when the stop reply arrived, and the methods used inside
// a pause (Stop, Continue, ReadRegister, WriteMemory) make one round trip
// and, on the hot path, no allocations beyond what they return.
//
// Under TCG write watchpoints are unlimited in number and length; under KVM
// they use the four debug registers (at most four, of 1, 2, 4 or 8 aligned
// bytes).
package gdbstub
