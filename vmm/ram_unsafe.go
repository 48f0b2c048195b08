package vmm

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// guestRAM is the guest's RAM, mapped read-only from QEMU's shared
// memory-backend-file, or, for a QEMU lucos attached to, read from the
// QEMU process (/proc/PID/mem from procBase on). Reads through it cost no
// round trip to QEMU. It is never written: TCG only notices code writes
// that pass through QEMU.
type guestRAM struct {
	mem      []byte
	proc     *os.File
	procBase uint64
	layout   ramLayout
}

// mapGuestRAM maps the backend file at path, then unlinks it: QEMU holds it
// open and mapped, so nothing is left in /dev/shm once both processes exit,
// even if lucos is killed.
func mapGuestRAM(path string, layout ramLayout) (*guestRAM, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open guest RAM backend: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat guest RAM backend: %w", err)
	}
	if uint64(st.Size()) < layout.size {
		return nil, fmt.Errorf("guest RAM backend %s is %d bytes, want %d", path, st.Size(), layout.size)
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, int(layout.size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map guest RAM (%d MiB): %w", layout.size>>20, err)
	}
	os.Remove(path)
	return &guestRAM{mem: mem, layout: layout}, nil
}

// read copies guest-physical memory at gpa into buf.
func (r *guestRAM) read(gpa uint64, buf []byte) error {
	off, err := r.layout.offset(gpa, uint64(len(buf)))
	if err != nil {
		return err
	}
	if r.proc != nil {
		if _, err := r.proc.ReadAt(buf, int64(r.procBase+off)); err != nil {
			return fmt.Errorf("read guest-physical %#x from QEMU's memory: %w", gpa, err)
		}
		return nil
	}
	copy(buf, r.mem[off:])
	return nil
}

func (r *guestRAM) unmap() {
	if r != nil && r.mem != nil {
		unix.Munmap(r.mem)
		r.mem = nil
	}
	if r != nil && r.proc != nil {
		r.proc.Close()
		r.proc = nil
	}
}
