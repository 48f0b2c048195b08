package introspect

import (
	"fmt"
	"strings"

	"github.com/lucos/lucos/kimage"
)

// offsets are the struct layouts introspection reads, all from BTF.
type offsets struct {
	taskTasks, taskPID, taskTGID, taskComm, taskState, taskExitState uint64
	taskOnCPU, taskCPU, taskStack, taskSP, taskFlags, taskSignal     uint64
	taskThreadNode, signalThreadHead, rqIdle                         uint64
	taskNVCSW, taskNIVCSW                                            uint64
	threadSize, irqStackSize, exceptionStacksSize, commLen           uint64

	perCPU map[string]uint64 // offset of each of perCPUVars in a CPU's per-CPU area
}

// requiredSymbols are the kernel symbols introspection needs.
var requiredSymbols = []string{"init_task", "nr_cpu_ids", "__per_cpu_offset"}

// perCPUVars are the per-CPU variables introspection reads, by their 6.1
// names. Since 6.2 the hottest of them (current_task, hardirq_stack_ptr)
// are members of one per-CPU struct pcpu_hot, a cache line of its own: a
// variable that is no symbol is looked for there, through BTF.
var perCPUVars = []string{"current_task", "runqueues", "hardirq_stack_ptr", "cea_exception_stacks"}

// perCPUOffset finds per-CPU variable name: its symbol's value (per-CPU
// symbols are absolute offsets into a CPU's area), or pcpu_hot's plus the
// member's offset.
func perCPUOffset(img *kimage.Image, name string) (uint64, error) {
	s, err := img.Symbols.Find(name, 0)
	if err == nil {
		if s.Type != 'A' {
			return 0, fmt.Errorf("introspection: %s is no per-CPU variable (type %c)", name, s.Type)
		}
		return s.Addr, nil
	}
	hot, herr := img.Symbols.Find("pcpu_hot", 0)
	if herr != nil {
		return 0, fmt.Errorf("introspection needs %w (and the kernel has no pcpu_hot)", err)
	}
	off, ferr := img.FieldOffset("pcpu_hot", name)
	if ferr != nil {
		return 0, fmt.Errorf("introspection needs %w, and pcpu_hot has no such member: %w", err, ferr)
	}
	return hot.Addr + off, nil
}

func resolveOffsets(img *kimage.Image) (*offsets, error) {
	for _, s := range requiredSymbols {
		if _, err := img.Symbols.Find(s, 0); err != nil {
			return nil, fmt.Errorf("introspection needs %w", err)
		}
	}
	o := &offsets{perCPU: map[string]uint64{}}
	for _, name := range perCPUVars {
		off, err := perCPUOffset(img, name)
		if err != nil {
			return nil, err
		}
		o.perCPU[name] = off
	}
	fields := []struct {
		dst       *uint64
		typ, path string
	}{
		{&o.taskTasks, "task_struct", "tasks"},
		{&o.taskPID, "task_struct", "pid"},
		{&o.taskTGID, "task_struct", "tgid"},
		{&o.taskComm, "task_struct", "comm"},
		{&o.taskState, "task_struct", "__state"},
		{&o.taskExitState, "task_struct", "exit_state"},
		{&o.taskOnCPU, "task_struct", "on_cpu"},
		{&o.taskCPU, "task_struct", "thread_info.cpu|cpu"},
		{&o.taskStack, "task_struct", "stack"},
		{&o.taskSP, "task_struct", "thread.sp"},
		{&o.taskFlags, "task_struct", "flags"},
		{&o.taskSignal, "task_struct", "signal"},
		{&o.taskThreadNode, "task_struct", "thread_node"},
		{&o.signalThreadHead, "signal_struct", "thread_head"},
		{&o.rqIdle, "rq", "idle"},
		{&o.taskNVCSW, "task_struct", "nvcsw"},
		{&o.taskNIVCSW, "task_struct", "nivcsw"},
	}
	for _, f := range fields {
		// "a|b": the field moved between kernel versions; take the first found.
		var v uint64
		var err error
		for _, path := range strings.Split(f.path, "|") {
			if v, err = img.FieldOffset(f.typ, path); err == nil {
				break
			}
		}
		if err != nil {
			return nil, fmt.Errorf("introspection: offset of %s.%s: %w", f.typ, f.path, err)
		}
		*f.dst = v
	}
	sizes := []struct {
		dst *uint64
		typ string
	}{
		// The hardirq stack and the per-CPU exception stacks are structs of
		// their own. On x86-64 IRQ_STACK_SIZE is THREAD_SIZE (both
		// PAGE_SIZE << (2 + KASAN_STACK_ORDER)); thread_union, which would
		// say it directly, is not in the kernel's BTF.
		{&o.irqStackSize, "irq_stack"},
		{&o.exceptionStacksSize, "cea_exception_stacks"},
	}
	for _, s := range sizes {
		v, err := img.Sizeof(s.typ)
		if err != nil {
			return nil, fmt.Errorf("introspection: size of %s: %w", s.typ, err)
		}
		*s.dst = v
	}
	o.threadSize = o.irqStackSize
	// init_stack, the boot CPU's idle stack, is exactly one THREAD_SIZE;
	// since 6.9 a symbol __top_init_kernel_stack marks where its pt_regs
	// begin, so its kallsyms size is THREAD_SIZE minus struct pt_regs.
	if st, err := img.Symbols.Find("init_stack", 0); err == nil && st.Size != 0 && st.Size != o.threadSize {
		regs, rerr := img.Sizeof("pt_regs")
		if _, top := img.Symbols.Find("__top_init_kernel_stack", 0); rerr != nil || top != nil || st.Size+regs != o.threadSize {
			return nil, fmt.Errorf("introspection: THREAD_SIZE from irq_stack is %#x but init_stack is %#x long", o.threadSize, st.Size)
		}
	}
	// comm is char[TASK_COMM_LEN]: its size is the distance to the member after it
	// would need more BTF plumbing; TASK_COMM_LEN is 16 in every kernel since 2.6.
	o.commLen = 16
	return o, nil
}
