package kimage_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/cilium/ebpf/btf"

	"github.com/lucos/lucos/kimage"
)

func synthSpec(t testing.TB) *btf.Spec {
	t.Helper()
	spec, err := btf.LoadSpecFromReader(bytes.NewReader(synthBTF(t)))
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

func TestFieldOffset(t *testing.T) {
	spec := synthSpec(t)
	for _, c := range []struct {
		typ, path string
		want      uint64
	}{
		{"task_struct", "__state", 0},  // inside an anonymous union
		{"task_struct", "state_lo", 0}, // anonymous struct in the anonymous union
		{"task_struct", "stack", 8},
		{"task_struct", "tasks", 24},
		{"task_struct", "tasks.prev", 32},
		{"task_struct", "comm", 40},
		{"task_struct", "comm[3]", 43},
		{"task_struct", "thread", 64}, // through a typedef
		{"task_struct", "thread.sp", 72},
		{"task_struct", "stacks[1].fsbase", 88 + 24 + 16},
		{"struct task_struct", "mm", 56},
		{"list_head", "prev", 8}, // the typedef of the same name is no struct
	} {
		got, err := kimage.FieldOffset(spec, c.typ, c.path)
		if err != nil || got != c.want {
			t.Errorf("FieldOffset(%s, %s) = %d, %v; want %d", c.typ, c.path, got, err, c.want)
		}
	}
}

func TestFieldOffsetErrors(t *testing.T) {
	spec := synthSpec(t)
	for _, c := range []struct {
		typ, path, msg string
		is             error
	}{
		{"task_struct", "in_iowait", "bitfield", nil},
		{"task_struct", "in_execve", "bitfield", nil},
		{"task_struct", "mm.pgd", "pointer", nil},
		{"task_struct", "nope", "no member", kimage.ErrNotFound},
		{"task_struct", "comm[16]", "out of range", nil},
		{"task_struct", "stack[0]", "not an array", nil},
		{"task_struct", "tasks..next", "empty member", nil},
		{"task_struct", "", "empty", nil},
		{"task_struct", "comm[x]", "bad index", nil},
		{"task_struct", "comm[1", "unclosed", nil},
		{"task_struct", "comm[1]x", "bad index", nil},
		{"no_such_struct", "x", "not found", kimage.ErrNotFound},
		{"mm_struct", "pgd.x", "not a struct", nil},
		{"union task_struct", "stack", "not found", kimage.ErrNotFound},
	} {
		_, err := kimage.FieldOffset(spec, c.typ, c.path)
		if err == nil || !strings.Contains(err.Error(), c.msg) || (c.is != nil && !errors.Is(err, c.is)) {
			t.Errorf("FieldOffset(%s, %q) = %v; want an error about %q", c.typ, c.path, err, c.msg)
		}
	}
	if _, err := kimage.FieldOffset(nil, "task_struct", "stack"); !errors.Is(err, kimage.ErrNoBTF) {
		t.Errorf("nil spec: %v", err)
	}
}

func TestSizeof(t *testing.T) {
	spec := synthSpec(t)
	for name, want := range map[string]uint64{
		"task_struct": 136, "struct list_head": 16, "list_head": 16, "thread_t": 24, "char": 1,
	} {
		if got, err := kimage.Sizeof(spec, name); err != nil || got != want {
			t.Errorf("Sizeof(%s) = %d, %v; want %d", name, got, err, want)
		}
	}
	if _, err := kimage.Sizeof(spec, "nothing"); !errors.Is(err, kimage.ErrNotFound) {
		t.Errorf("Sizeof(nothing): %v", err)
	}
	if _, err := kimage.Sizeof(spec, "struct "); !errors.Is(err, kimage.ErrNotFound) {
		t.Errorf(`Sizeof("struct "): %v`, err)
	}
}
