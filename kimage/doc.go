// Package kimage is everything lucos knows about a guest kernel from its boot
// image alone, without running it: the vmlinux inside the bzImage, the
// kernel's own symbol table (kallsyms, decoded from the image), its types
// (BTF) and its banner.
//
// It sits between package guest (which caches the image) and the stages that
// touch a running guest: introspection adds the KASLR slide to the link-time
// addresses found here, and the update engine resolves patch symbols (with
// livepatch's sympos) and struct offsets against them. Everything is derived
// from the image; nothing here is specific to one kernel build.
//
// The data path:
//
//	vmlinuz ──bzimage header──► payload ──Decompress──► vmlinux (ELF)
//	vmlinux .rodata ──ParseKallsyms──► Symbols
//	vmlinux .BTF ──btf──► types (FieldOffset, Sizeof)
//	Symbols["linux_banner"] ──► Banner (compared later with guest memory)
//
// Load composes these and caches the result by the image's sha256.
package kimage
