package introspect

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/lucos/lucos/gdbstub"
)

// pfKthread is PF_KTHREAD in task_struct.flags (include/linux/sched.h).
const pfKthread = 0x00200000

// Task is one kernel task (a thread) as read from guest memory.
type Task struct {
	Addr    uint64 `json:"addr"` // the task_struct
	PID     int    `json:"pid"`
	TGID    int    `json:"tgid"`
	Comm    string `json:"comm"`
	State   string `json:"state"` // R S D T t X Z P I, as in /proc/PID/stat
	OnCPU   bool   `json:"on_cpu"`
	CPU     int    `json:"cpu"`
	Kthread bool   `json:"kthread"`
	Idle    bool   `json:"idle"` // a per-CPU idle task (pid 0)
	// Stack is the kernel stack's lowest address; it spans StackSize bytes.
	Stack     uint64 `json:"stack"`
	StackSize uint64 `json:"stack_size"`
	// SavedSP is thread.sp: where the task's kernel stack pointer was when
	// it was last switched out. Meaningless while it runs.
	SavedSP uint64 `json:"saved_sp"`
	// Switches counts the task's context switches (nvcsw + nivcsw): equal
	// in two snapshots, and not on a CPU in either, the task did not run
	// in between.
	Switches uint64 `json:"switches"`
}

// StackKind says which stack a vCPU's RSP is on.
type StackKind string

const (
	StackUser      StackKind = "user"      // the vCPU runs user code
	StackTask      StackKind = "task"      // its current task's kernel stack
	StackHardIRQ   StackKind = "hardirq"   // the CPU's hardirq stack
	StackException StackKind = "exception" // one of the CPU's IST stacks (NMI, #DF, #DB, #MC)
	StackOther     StackKind = "other"     // e.g. the entry trampoline stack
)

// VCPU is one virtual CPU at the moment of a snapshot.
type VCPU struct {
	Thread  int       `json:"thread"` // gdbstub thread id
	CPU     int       `json:"cpu"`    // the kernel's CPU number
	RIP     uint64    `json:"rip"`
	RSP     uint64    `json:"rsp"`
	User    bool      `json:"user"`
	Stack   StackKind `json:"stack"`
	Current uint64    `json:"current"` // task_struct of the task it runs

	regs cpuRegs // where an unwind of the task it runs starts
}

// stackCopy is a live part of a stack, copied while the VM was paused.
type stackCopy struct {
	base uint64 // virtual address of data[0]
	data []byte
}

// Snapshot is the guest's tasks and vCPUs at one paused moment, with the
// live part of every kernel stack copied, so scans need no further pause.
type Snapshot struct {
	Tasks []Task `json:"tasks"`
	VCPUs []VCPU `json:"vcpus"`
	// Pause is how long the guest was stopped to take the snapshot.
	Pause time.Duration `json:"pause_ns"`

	k      *Kernel
	stacks map[uint64][]stackCopy // by task_struct, plus vcpuKey(n) for IRQ/IST stacks
	words  int

	orcMods []*orcTable      // the modules' ORC tables at the snapshot
	orcErr  error            // reading them failed: no exact unwinding
	traces  map[uint64]Trace // Unwind's results, by task_struct
}

// Snapshot pauses the VM, reads every task and vCPU and copies the live part
// of every kernel stack, then resumes.
func (k *Kernel) Snapshot(ctx context.Context) (*Snapshot, error) {
	k.initORC() // vmlinux's tables, read once, the VM running: they never change
	var s *Snapshot
	pause, err := k.m.WithPaused(ctx, func(g *gdbstub.Client) error {
		var err error
		s, err = k.SnapshotPaused(g)
		return err
	})
	if err != nil {
		return nil, err
	}
	s.Pause = pause
	return s, nil
}

// SnapshotPaused is Snapshot for a caller that already holds the VM
// stopped (e.g. to explain a guest call that did not return); its Pause is
// 0. It reads vmlinux's ORC tables first if no one has yet.
func (k *Kernel) SnapshotPaused(g *gdbstub.Client) (*Snapshot, error) {
	s := &Snapshot{k: k, stacks: map[uint64][]stackCopy{}, traces: map[uint64]Trace{}}
	o := k.initORC()
	if err := s.readVCPUs(g); err != nil {
		return nil, err
	}
	if err := s.readTasks(); err != nil {
		return nil, err
	}
	if o.err == nil {
		s.orcMods, s.orcErr = k.moduleORC(o)
	}
	if err := s.copyStacks(); err != nil {
		return nil, err
	}
	return s, nil
}

// Tasks lists every task with the VM paused (a snapshot's tasks).
func (k *Kernel) Tasks(ctx context.Context) ([]Task, error) {
	s, err := k.Snapshot(ctx)
	if err != nil {
		return nil, err
	}
	return s.Tasks, nil
}

func (s *Snapshot) readVCPUs(g *gdbstub.Client) error {
	k := s.k
	for _, tid := range g.Threads() {
		regs, err := g.ReadRegisters(tid)
		if err != nil {
			return err
		}
		get := func(name string) uint64 { v, _ := regs.Get(name); return v }
		v := VCPU{Thread: tid, CPU: -1, RIP: get("rip"), RSP: get("rsp"), User: get("cs")&3 == 3}
		v.regs = cpuRegs{ip: v.RIP, sp: v.RSP, bp: get("rbp"), r10: get("r10"), r13: get("r13"),
			di: get("rdi"), dx: get("rdx"), cs: get("cs")}
		// The kernel's GS base is the CPU's per-CPU offset: in gs_base while in
		// the kernel, in k_gs_base (swapped out) while in user mode.
		for cpu, off := range k.PerCPU {
			if off == get("gs_base") || off == get("k_gs_base") {
				v.CPU = cpu
				break
			}
		}
		if v.CPU < 0 {
			return fmt.Errorf("vCPU %d: GS base %#x / %#x is no CPU's per-CPU area", tid, get("gs_base"), get("k_gs_base"))
		}
		cur, err := k.read64(k.perCPUAddr("current_task", v.CPU))
		if err != nil {
			return fmt.Errorf("vCPU %d: read current_task: %w", tid, err)
		}
		v.Current = cur
		s.VCPUs = append(s.VCPUs, v)
	}
	return nil
}

func (s *Snapshot) readTasks() error {
	k, o := s.k, s.k.offs
	seen := map[uint64]bool{}
	add := func(addr uint64, idle bool) error {
		if seen[addr] {
			return nil
		}
		seen[addr] = true
		t, err := k.readTask(addr)
		if err != nil {
			return err
		}
		t.Idle = idle
		s.Tasks = append(s.Tasks, t)
		return nil
	}
	// Every thread group leader is on init_task.tasks; each group's threads
	// are on its signal->thread_head list.
	head := k.must("init_task") + o.taskTasks
	leaders := []uint64{k.must("init_task")}
	err := k.walkList(head, o.taskTasks, func(task uint64) error {
		leaders = append(leaders, task)
		return nil
	})
	if err != nil {
		return fmt.Errorf("walk init_task.tasks: %w", err)
	}
	for _, leader := range leaders {
		if err := add(leader, leader == k.must("init_task")); err != nil {
			return err
		}
		sig, err := k.read64(leader + o.taskSignal)
		if err != nil || sig == 0 {
			continue
		}
		err = k.walkList(sig+o.signalThreadHead, o.taskThreadNode, func(task uint64) error {
			return add(task, false)
		})
		if err != nil {
			return fmt.Errorf("walk threads of task %#x: %w", leader, err)
		}
	}
	// The idle tasks of the other CPUs are on no list: find them through
	// each CPU's runqueue.
	for cpu := range s.VCPUs {
		idle, err := k.read64(k.perCPUAddr("runqueues", s.VCPUs[cpu].CPU) + o.rqIdle)
		if err != nil {
			return fmt.Errorf("read runqueue of CPU %d: %w", cpu, err)
		}
		if err := add(idle, true); err != nil {
			return err
		}
	}
	return nil
}

// maxListLen bounds list walks so a corrupt list cannot loop forever.
const maxListLen = 1 << 20

// walkList calls fn with the container of every entry of the list_head at
// head, where member is the list_head's offset in the container.
func (k *Kernel) walkList(head, member uint64, fn func(uint64) error) error {
	next, err := k.read64(head)
	if err != nil {
		return err
	}
	for n := 0; next != head; n++ {
		if n == maxListLen {
			return fmt.Errorf("list at %#x has no end after %d entries", head, n)
		}
		if err := fn(next - member); err != nil {
			return err
		}
		if next, err = k.read64(next); err != nil {
			return err
		}
	}
	return nil
}

func (k *Kernel) readTask(addr uint64) (Task, error) {
	o := k.offs
	end := max(o.taskComm+o.commLen, o.taskSP+8, o.taskTasks+16, o.taskStack+8, o.taskState+4, o.taskExitState+4,
		o.taskOnCPU+4, o.taskCPU+4, o.taskFlags+4, o.taskPID+4, o.taskTGID+4, o.taskNVCSW+8, o.taskNIVCSW+8)
	b := make([]byte, end)
	if err := k.Walker.ReadVirt(addr, b); err != nil {
		return Task{}, fmt.Errorf("read task_struct at %#x: %w", addr, err)
	}
	u32 := func(off uint64) uint32 { return binary.LittleEndian.Uint32(b[off:]) }
	u64 := func(off uint64) uint64 { return binary.LittleEndian.Uint64(b[off:]) }
	comm := b[o.taskComm : o.taskComm+o.commLen]
	if i := bytes.IndexByte(comm, 0); i >= 0 {
		comm = comm[:i]
	}
	t := Task{
		Addr:      addr,
		PID:       int(int32(u32(o.taskPID))),
		TGID:      int(int32(u32(o.taskTGID))),
		Comm:      string(comm),
		State:     stateLetter(u32(o.taskState), u32(o.taskExitState)),
		OnCPU:     u32(o.taskOnCPU) != 0,
		CPU:       int(u32(o.taskCPU)),
		Kthread:   u32(o.taskFlags)&pfKthread != 0,
		Stack:     u64(o.taskStack),
		StackSize: o.threadSize,
		SavedSP:   u64(o.taskSP),
		Switches:  u64(o.taskNVCSW) + u64(o.taskNIVCSW),
	}
	return t, nil
}

// stateLetter mirrors the kernel's task_state_index(): the letter
// /proc/PID/stat shows. The bit values are the kernel's TASK_* constants
// (include/linux/sched.h), stable across 5.x and 6.x.
func stateLetter(state, exitState uint32) string {
	const (
		interruptible   = 0x1
		uninterruptible = 0x2
		stopped         = 0x4
		traced          = 0x8
		exitDead        = 0x10
		exitZombie      = 0x20
		parked          = 0x40
		noload          = 0x400
	)
	s := (state | exitState) & 0x7f
	switch {
	case state == uninterruptible|noload:
		return "I"
	case s == 0:
		return "R"
	case s&interruptible != 0:
		return "S"
	case s&uninterruptible != 0:
		return "D"
	case s&stopped != 0:
		return "T"
	case s&traced != 0:
		return "t"
	case s&exitDead != 0:
		return "X"
	case s&exitZombie != 0:
		return "Z"
	case s&parked != 0:
		return "P"
	}
	return "?"
}
