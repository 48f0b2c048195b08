// lucos-fixcheck: checks, run inside the guest, that show whether a real
// kernel fix is live. Each check exits 0 when the kernel behaves as fixed,
// 1 when it behaves as before the fix, 2 when the check itself failed; it
// prints one line saying what it saw.
//
//   lucos-fixcheck timens   CVE-2026-93146: a time namespace offset whose
//                           nanoseconds are negative (18446744073709551615
//                           parses as -1) must be refused with EINVAL.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif

static int check_timens(void)
{
	// The kernel's parser takes "%lu" and refuses >= NSEC_PER_SEC as a
	// signed long: ULONG_MAX becomes -1 and passes it; the fix refuses
	// tv_nsec < 0 in proc_timens_set_offset().
	static const char offset[] = "monotonic 0 18446744073709551615\n";
	if (unshare(CLONE_NEWTIME) != 0) {
		printf("error: unshare(CLONE_NEWTIME): %s\n", strerror(errno));
		return 2;
	}
	int fd = open("/proc/self/timens_offsets", O_WRONLY);
	if (fd < 0) {
		printf("error: open /proc/self/timens_offsets: %s\n", strerror(errno));
		return 2;
	}
	if (write(fd, offset, sizeof(offset) - 1) >= 0) {
		printf("vulnerable: a negative nanosecond offset was accepted\n");
		return 1;
	}
	if (errno == EINVAL) {
		printf("fixed: a negative nanosecond offset is refused with EINVAL\n");
		return 0;
	}
	printf("error: write: %s\n", strerror(errno));
	return 2;
}

int main(int argc, char **argv)
{
	if (argc == 2 && strcmp(argv[1], "timens") == 0)
		return check_timens();
	fprintf(stderr, "usage: lucos-fixcheck timens\n");
	return 2;
}
