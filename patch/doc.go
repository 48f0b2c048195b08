// Package patch is lucos's update engine (the LUCOS "Update Server"): it
// loads a linked patch into a slot of the reserved guest region, redirects
// old kernel functions to their replacements with no safe point, tracks each
// update until stack inspection shows no thread inside an old function
// (commit), and rolls updates back. One file per concept:
//
//	state.go      the transition state machine and a patch's record
//	slot.go       mapping a slot of the patch region into the kernel-image window
//	redirect.go   writing and restoring the jumps over old functions' entries
//	terminate.go  stack inspection until nothing runs old (or patch) code
//	rollback.go   the reverse transaction
//	engine.go     the stack of patches and the composition of the above
//
// Every guest write goes through QEMU (the gdbstub, physical mode) inside a
// pause of all vCPUs, and every transition is all-or-nothing: a failure
// restores what was written before the vCPUs run again.
package patch
