// Package api is lucos's control API: HTTP+JSON on a unix socket (mode
// 0600), one socket per VM, served by the `lucos run` process that owns the
// VM. The CLI's other commands (`lucos exec`, and later patch and ps) are
// clients of it. Routes:
//
//	GET  /vm    the VM: state, vCPUs, accelerator, kernel release, run dir, pauses
//	POST /exec  run a command in the guest: {"argv": [...]} or {"script": "..."}
//	GET  /tasks every task (guest paused for the snapshot) with its top kernel frames
//	GET  /sym   ?q=NAME[&pos=N] or ?q=0xADDR: symbol ↔ runtime address (KASLR slide applied)
//	POST /patches               apply a patch module: {"ko": base64, "wait": bool, "timeout": "30s"}
//	GET  /patches               every patch with its state, pause and time to commit
//	POST /patches/{id}/rollback roll a patch back: {"wait": bool, "timeout": "30s"}
package api

import (
	"time"

	"github.com/lucos/lucos/vmm"
)

// VMInfo is the reply to GET /vm.
type VMInfo struct {
	State       vmm.State `json:"state"`
	CPUs        int       `json:"vcpus"`
	MemoryMiB   uint64    `json:"memory_mib"`
	Accel       vmm.Accel `json:"accel"`
	AccelReason string    `json:"accel_reason"`
	Release     string    `json:"kernel_release"`
	RunDir      string    `json:"run_dir"`
	ConsoleLog  string    `json:"console_log"`
	QEMUPID     int       `json:"qemu_pid"`
	ServerPID   int       `json:"server_pid"`
	BootMillis  float64   `json:"boot_ms"` // launch to ready; for an attached VM, the attach
	// Attached: lucos attached to a QEMU it did not start (lucos attach);
	// detaching leaves it running.
	Attached bool           `json:"attached"`
	RAM      string         `json:"ram_access"` // how lucos reads guest RAM
	Pauses   vmm.PauseStats `json:"pauses"`
}

// ExecRequest is the body of POST /exec; give Argv or Script.
type ExecRequest struct {
	Argv    []string `json:"argv,omitempty"`
	Script  string   `json:"script,omitempty"`
	Timeout Duration `json:"timeout,omitempty"` // default 10 minutes
}

// Duration is a time.Duration written in JSON as a Go duration string ("30s").
type Duration time.Duration

func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	*d = Duration(v)
	return err
}

// errorBody is the JSON body of every error reply.
type errorBody struct {
	Error string `json:"error"`
}

// DetachReply is the reply to POST /detach: the lucos that will detach.
type DetachReply struct {
	ServerPID int `json:"server_pid"`
}
