// SPDX-License-Identifier: GPL-2.0
/*
 * getcpu-probe: calls getcpu(2) with the cache argument that the
 * user-fault example patch reads and writes with inline user access, and
 * prints what the program sees, one line per case:
 *
 *   null RET               cache NULL
 *   good RET BLOB0         a writable cache whose blob[0] was 41
 *   unmapped RET           cache at 0x1000, below mmap_min_addr: never mapped
 *   readonly RET BLOB0     a cache in .rodata whose blob[0] is 7
 *
 * Freestanding and static (the guest has busybox, no libc): built with
 * -nostdlib -static, it makes the raw system calls itself.
 */
#define SYS_write	1
#define SYS_exit	60
#define SYS_getcpu	309

static long sys3(long n, long a, long b, long c)
{
	long ret;

	asm volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
	return ret;
}

static char out[256];
static int len;

static void puts_(const char *s)
{
	while (*s)
		out[len++] = *s++;
}

static void putl(long v)
{
	char d[24];
	int n = 0;
	unsigned long u = v < 0 ? -(unsigned long)v : (unsigned long)v;

	if (v < 0)
		out[len++] = '-';
	do {
		d[n++] = '0' + u % 10;
		u /= 10;
	} while (u);
	while (n)
		out[len++] = d[--n];
}

static unsigned long cache[16] = { 41 };
static const unsigned long ro_cache[16] = { 7 };

__attribute__((force_align_arg_pointer, noreturn)) void _start(void)
{
	unsigned int cpu, node;
	volatile const unsigned long *ro = ro_cache;
	long r;

	r = sys3(SYS_getcpu, (long)&cpu, (long)&node, 0);
	puts_("null "), putl(r), puts_("\n");
	r = sys3(SYS_getcpu, (long)&cpu, (long)&node, (long)cache);
	puts_("good "), putl(r), puts_(" "), putl(cache[0]), puts_("\n");
	r = sys3(SYS_getcpu, 0, 0, 0x1000);
	puts_("unmapped "), putl(r), puts_("\n");
	r = sys3(SYS_getcpu, 0, 0, (long)ro_cache);
	puts_("readonly "), putl(r), puts_(" "), putl(ro[0]), puts_("\n");
	sys3(SYS_write, 1, (long)out, len);
	sys3(SYS_exit, 0, 0, 0);
	for (;;)
		;
}
