// Package srcdiff builds a lucos patch from source diffs — the fixes users
// actually have (a CVE fix, a stable commit, a distro patch) — the way
// kpatch-build does for Linux livepatch: `lucos patch build --diff FIX.patch`.
//
// In the data path it sits before the loader:
//
//	FIX.patch ──GNU patch──► patched copies of the files it touches
//	original + patched .c ──kbuild's own command, -ffunction-sections──► two objects per file
//	two objects ──compare (compare.go)──► changed and new functions, changed data
//	changed functions ──locate (locate.go)──► the guest's definitions (sympos), code checked
//	functions + tables ──emit (emit.go, elfwrite.go)──► one relocatable object
//	object + generated descriptors ──patch/build (kbuild)──► an ordinary patch .ko
//
// The kernel's source is Debian's linux-source of the image's exact version,
// prepared once per release by package guest (guest.Source). The original
// objects are built by kbuild in that tree; the patched ones by the same
// command on copies, so flags, compiler and generated headers are the
// guest's. Before a function is replaced, its original object code is
// compared with the guest image's: a source that does not build to what
// the guest runs is refused.
//
// One file per step: unidiff.go (files a diff touches, GNU patch, line
// maps), headers.go (which files a changed header affects), compile.go,
// object.go (the ELF model: where each relocation points), tables.go (per-
// site tables: alternatives, exception table, static branches, ...),
// compare.go, analyze.go (what the patch carries, what is refused),
// explain.go (why a function changed, from DWARF), locate.go, emit.go,
// elfwrite.go, build.go (the composition).
package srcdiff
