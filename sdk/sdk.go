// Package sdk carries what lucos puts into every patch build: the C header
// patch authors include, lucos/patch.h, and the runtime linked into every
// patch, runtime/lucos_rt.c. Both are embedded so that the lucos binary
// builds patches from any directory.
package sdk

import _ "embed"

// PatchHeader is include/lucos/patch.h.
//
//go:embed include/lucos/patch.h
var PatchHeader []byte

// Runtime is runtime/lucos_rt.c: __lucos_call, __lucos_trampoline,
// __lucos_rt_exit and the shadow variables (lucos_shadow_*).
//
//go:embed runtime/lucos_rt.c
var Runtime []byte
