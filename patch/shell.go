package patch

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/lucos/lucos/gdbstub"
	"github.com/lucos/lucos/patch/loader"
)

// The module shell (loader.Shell, sdk/runtime/lucos_rt.c): each patch is
// registered with the guest kernel as a struct module, lucos_<patch>, so
// that the kernel's own lookups by address cover patch code — its
// exception table (a fault in an inline user access returns -EFAULT
// instead of an oops), ORC unwinding, kallsyms, the bug table. It is
// registered after the load and before anything can run patch code (the
// startup callbacks, the switch), and unregistered once nothing runs
// patch code any more, before the slot is freed.
//
// Registering takes module_mutex, which sleeps; a guest call may not. So
// a guest call of the runtime's __lucos_shell_start queues the work on a
// kworker and returns, and lucos polls the work's result word through the
// shared memory mapping, the guest running. A queued add that does not
// finish in time is cancelled (__lucos_shell_cancel); the work never
// blocks while queued, so the cancel is final. Before the slot goes, lucos
// waits until no thread is in patch code: the kworker returns through it
// after storing its result.

const (
	// shellTimeout bounds one shell operation, from its queueing to its
	// result (the kworker may wait for module_mutex, held while another
	// module loads).
	shellTimeout = 10 * time.Second
	// shellPoll: the first look at the result, then twice as long each time, up to shellPollMax.
	shellPoll    = 200 * time.Microsecond
	shellPollMax = 10 * time.Millisecond
)

// ErrShellTimeout means the guest's kworker did not finish a module-shell
// operation in time.
var ErrShellTimeout = errors.New("the guest did not run the module shell's work in time")

// registerShell adds p's module shell to the guest's modules.
func (e *Engine) registerShell(ctx context.Context, p *Patch) error {
	if p.shell == nil {
		return nil
	}
	res, err := e.shellOp(ctx, p, loader.ShellAdd)
	if err != nil {
		return fmt.Errorf("register module %s: %w", p.shell.Name, err)
	}
	switch {
	case res == 0:
		p.setShellUp(true)
		return nil
	case res == -int64(syscall.EEXIST):
		return fmt.Errorf("register module %s: a module of that name was loaded in the guest meanwhile; apply again", p.shell.Name)
	}
	return fmt.Errorf("register module %s: %w", p.shell.Name, syscall.Errno(-res))
}

// unregisterShell removes p's module shell from the guest's modules, as
// delete_module would (GOING: what watches modules, kprobes in patch code
// among them, lets go; then unlinked, then an RCU grace period).
func (e *Engine) unregisterShell(ctx context.Context, p *Patch) error {
	if !p.shellIsUp() {
		return nil
	}
	res, err := e.shellOp(ctx, p, loader.ShellDel)
	if err != nil {
		return fmt.Errorf("unregister module %s: %w", p.shell.Name, err)
	}
	switch res {
	case 0, -int64(syscall.ENOENT): // ENOENT: a forced rmmod got there first
		p.setShellUp(false)
		return nil
	case -int64(syscall.EBUSY):
		return fmt.Errorf("unregister module %s: the guest holds a reference to it (try_module_get: a tracer on patch code?); the slot stays mapped", p.shell.Name)
	case -int64(syscall.EALREADY):
		return fmt.Errorf("unregister module %s: a forced rmmod (rmmod -f) of it is under way in the guest; the slot stays mapped", p.shell.Name)
	}
	return fmt.Errorf("unregister module %s: %w", p.shell.Name, syscall.Errno(-res))
}

// shellOp queues op on a kworker through a guest call and waits for its
// result: 0 or -errno. An add that times out is cancelled if it has not
// started; one that started is waited for once more.
func (e *Engine) shellOp(ctx context.Context, p *Patch, op uint64) (int64, error) {
	p.shellTouched = true
	if _, err := e.shellCall(ctx, p, p.shell.Start, op); err != nil {
		return 0, err
	}
	res, done, err := e.pollShell(ctx, p)
	if err != nil || done {
		return res, err
	}
	if op != loader.ShellAdd {
		p.shellStuck = true
		return 0, fmt.Errorf("%w (%v)", ErrShellTimeout, shellTimeout)
	}
	cancelled, err := e.shellCall(ctx, p, p.shell.Cancel)
	if err != nil {
		p.shellStuck = true
		return 0, fmt.Errorf("%w (%v), and cancelling it failed: %v", ErrShellTimeout, shellTimeout, err)
	}
	if cancelled == 1 {
		return 0, fmt.Errorf("%w (%v: the kworker never ran it, or never got module_mutex); cancelled", ErrShellTimeout, shellTimeout)
	}
	// It runs, or just ran: it never blocks, so it ends soon.
	if res, done, err = e.pollShell(ctx, p); err != nil || done {
		return res, err
	}
	p.shellStuck = true
	return 0, fmt.Errorf("%w (%v, twice)", ErrShellTimeout, shellTimeout)
}

// shellCall runs one of the shell's entry points as a guest call and
// returns its result; a nonzero result of __lucos_shell_start is an error.
func (e *Engine) shellCall(ctx context.Context, p *Patch, fn uint64, args ...uint64) (uint64, error) {
	var ret uint64
	_, err := e.m.WithPaused(ctx, func(g *gdbstub.Client) error {
		site, err := e.pick(ctx, g, false)
		if err != nil {
			return err
		}
		ret, err = e.call(ctx, g, site, p, fn, args...)
		return err
	})
	if err != nil {
		return 0, err
	}
	if fn == p.shell.Start && ret != 0 {
		return 0, fmt.Errorf("__lucos_shell_start: %w", syscall.Errno(-int64(ret)))
	}
	return ret, nil
}

// pollShell reads the shell's result word until the work is done or
// shellTimeout passes.
func (e *Engine) pollShell(ctx context.Context, p *Patch) (int64, bool, error) {
	deadline := time.Now().Add(shellTimeout)
	for delay := shellPoll; ; delay = min(2*delay, shellPollMax) {
		var b [8]byte
		if err := e.k.ReadVirt(p.shell.Result, b[:]); err != nil {
			return 0, false, fmt.Errorf("read the module shell's result: %w", err)
		}
		if res := int64(binary.LittleEndian.Uint64(b[:])); res != loader.ShellPending {
			return res, true, nil
		}
		if time.Now().After(deadline) {
			return 0, false, nil
		}
		select {
		case <-ctx.Done():
			return 0, false, ctx.Err()
		case <-time.After(delay):
		}
	}
}

func (p *Patch) setShellUp(up bool) {
	p.mu.Lock()
	p.shellUp = up
	p.mu.Unlock()
}

func (p *Patch) shellIsUp() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.shellUp
}
