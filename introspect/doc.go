// Package introspect is lucos's eyes on a running guest, with no help from
// the guest: it translates guest-virtual addresses by walking the guest's
// page tables, and (with the symbols and types of package kimage) finds the
// KASLR slide, tasks, per-CPU data and what every kernel stack holds.
package introspect
