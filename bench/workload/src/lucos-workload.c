/*
 * lucos-workload: the guest workloads of lucos's evaluation, one static
 * program built on the host by bench/workload (gcc -static, SQLite from
 * Debian's libsqlite3-dev) and run in the guest.
 *
 *   lucos-workload NAME SECONDS [BUCKET_MS]   run workload NAME
 *   lucos-workload list                       the workload names
 *   lucos-workload clock                      CLOCK_MONOTONIC now, in ns
 *
 * A run repeats one operation ("op") of the workload for SECONDS and
 * counts ops in buckets of BUCKET_MS (default 100). It prints, once the run
 * is over (so that printing never disturbs it):
 *
 *   start <ns>                            CLOCK_MONOTONIC when timing began
 *   b <ns> <ops>                          per bucket: its end, ops in it
 *   total <ops> <elapsed_ns> <ops_per_sec>
 *
 * A bucket ends at the first clock reading at or after its deadline
 * (start + k * BUCKET_MS), so bucket ends are a little late and, when the
 * program could not run for longer than a bucket (it was preempted, say),
 * one bucket covers the whole gap rather than several empty ones: the time
 * a bucket covers is its end minus the previous end (or start). A pause of
 * the whole VM leaves no gap: the guest's clock stands still meanwhile.
 *
 * The workloads (analogues of the LUCOS paper's SPEC INT, kernel build and
 * OSDB runs):
 *
 *   cpu      LZ77-style match finding over 16 KiB of a 256 KiB text buffer
 *            per op; no system calls.
 *   syscall  getpid() plus a 1-byte write and read through a pipe per op.
 *   fork     fork, execve("/bin/true") and waitpid per op.
 *   fs       create a file in /tmp (tmpfs in the lucos guest), write 4 KiB,
 *            close it and unlink it per op.
 *   oltp     one sysbench-OLTP-shaped SQLite transaction per op on a
 *            10,000-row table in /tmp.
 *
 * Exit status: 0 on success, 1 when a workload fails, 2 on bad usage.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

static const char *prog = "lucos-workload";

/* die reports a failure of the running workload and exits 1. */
static void die(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "%s: ", prog);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

/* now_ns reads CLOCK_MONOTONIC: through the vDSO where the clock source
 * allows it (not the TCG guest's HPET, where it is a system call). */
static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* xorshift64 is the pseudo-random generator of every workload: fixed seeds
 * make runs repeatable. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint64_t rnd(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

/* ---- cpu: LZ77-style compression kernel ---------------------------------- */

#define CPU_BUF (256 * 1024)
#define CPU_CHUNK (16 * 1024)
#define CPU_HASH_BITS 12

static unsigned char cpu_buf[CPU_BUF];
static uint32_t cpu_off;
static volatile uint32_t cpu_sink; /* keeps the compiler from dropping the work */

/* cpu_setup fills the buffer with text-like data: words drawn from a small
 * vocabulary, so that the match finder finds matches of varied lengths. */
static void cpu_setup(void)
{
	static const char *words[] = {
		"the ", "kernel ", "patch ", "function ", "return ", "struct ",
		"static ", "int ", "void ", "if (", "while (", "); ", "{\n", "}\n",
		"lock ", "unlock ", "task ", "page ", "0x", "NULL", "err ", "= ",
	};
	const size_t nwords = sizeof(words) / sizeof(words[0]);
	size_t i = 0;

	while (i < CPU_BUF) {
		const char *w = words[rnd() % nwords];
		while (*w && i < CPU_BUF)
			cpu_buf[i++] = (unsigned char)*w++;
		if (rnd() % 8 == 0 && i < CPU_BUF)
			cpu_buf[i++] = (unsigned char)('a' + rnd() % 26);
	}
}

static uint32_t read32(const unsigned char *p)
{
	uint32_t v;

	memcpy(&v, p, 4);
	return v;
}

/* cpu_op compresses the next 16 KiB of the buffer greedily, LZ4-style: a
 * hash of each 4-byte sequence finds one earlier candidate, a match is
 * extended byte by byte, and the token stream (literal or length+distance)
 * is folded into a checksum instead of being written out. */
static void cpu_op(void)
{
	uint32_t head[1 << CPU_HASH_BITS];
	const unsigned char *src = cpu_buf + cpu_off;
	uint32_t i = 0, sum = 1;

	memset(head, 0xff, sizeof(head));
	while (i + 4 <= CPU_CHUNK) {
		uint32_t h = (read32(src + i) * 2654435761u) >> (32 - CPU_HASH_BITS);
		uint32_t cand = head[h];
		uint32_t len = 0;

		head[h] = i;
		if (cand != 0xffffffffu && read32(src + cand) == read32(src + i)) {
			len = 4;
			while (i + len < CPU_CHUNK && src[cand + len] == src[i + len])
				len++;
		}
		if (len) {
			sum = sum * 31 + (len << 16 | (i - cand));
			i += len;
		} else {
			sum = sum * 31 + src[i];
			i++;
		}
	}
	cpu_sink += sum;
	cpu_off = (cpu_off + CPU_CHUNK) % CPU_BUF;
}

/* ---- syscall: getpid and a pipe round trip -------------------------------- */

static int pipe_fd[2];

static void syscall_setup(void)
{
	if (pipe(pipe_fd) != 0)
		die("syscall: pipe: %s", strerror(errno));
}

static void syscall_op(void)
{
	char c = 'x';

	syscall(SYS_getpid); /* glibc's getpid() would not enter the kernel every time */
	if (write(pipe_fd[1], &c, 1) != 1)
		die("syscall: write: %s", strerror(errno));
	if (read(pipe_fd[0], &c, 1) != 1)
		die("syscall: read: %s", strerror(errno));
}

/* ---- fork: fork + execve + waitpid ---------------------------------------- */

static char *const true_argv[] = {"true", NULL};
static char *const no_env[] = {NULL};

static void fork_op(void)
{
	int status;
	pid_t pid = fork();

	if (pid < 0)
		die("fork: fork: %s", strerror(errno));
	if (pid == 0) {
		execve("/bin/true", true_argv, no_env);
		_exit(127);
	}
	if (waitpid(pid, &status, 0) != pid)
		die("fork: waitpid: %s", strerror(errno));
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		die("fork: /bin/true exited with status %#x (is it there?)", status);
}

/* ---- fs: create, write, close, unlink ------------------------------------- */

static char fs_dir[64];
static char fs_data[4096];
static uint64_t fs_seq;

static void fs_setup(void)
{
	snprintf(fs_dir, sizeof(fs_dir), "/tmp/lucos-workload-fs.%d", (int)getpid());
	if (mkdir(fs_dir, 0755) != 0)
		die("fs: mkdir %s: %s", fs_dir, strerror(errno));
	memset(fs_data, 'f', sizeof(fs_data));
}

static void fs_op(void)
{
	char path[96];
	int fd;

	/* A new name each time, so that the dentry cache sees real churn. */
	snprintf(path, sizeof(path), "%s/f%llu", fs_dir, (unsigned long long)fs_seq++);
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
	if (fd < 0)
		die("fs: create %s: %s", path, strerror(errno));
	if (write(fd, fs_data, sizeof(fs_data)) != (ssize_t)sizeof(fs_data))
		die("fs: write %s: %s", path, strerror(errno));
	if (close(fd) != 0)
		die("fs: close %s: %s", path, strerror(errno));
	if (unlink(path) != 0)
		die("fs: unlink %s: %s", path, strerror(errno));
}

static void fs_teardown(void)
{
	rmdir(fs_dir);
}

/* ---- oltp: sysbench-OLTP-shaped SQLite transactions ----------------------- */

#define OLTP_ROWS 10000
#define OLTP_RANGE 10

static sqlite3 *db;
static char db_path[64];

/* The statements of one transaction, prepared once. */
enum {
	ST_BEGIN, ST_POINT, ST_RANGE, ST_UPDATE_K, ST_UPDATE_C, ST_DELETE,
	ST_INSERT, ST_COMMIT, ST_COUNT
};
static const char *const oltp_sql[ST_COUNT] = {
	[ST_BEGIN] = "BEGIN",
	[ST_POINT] = "SELECT c FROM sbtest WHERE id = ?1",
	[ST_RANGE] = "SELECT c FROM sbtest WHERE id BETWEEN ?1 AND ?1 + 9",
	[ST_UPDATE_K] = "UPDATE sbtest SET k = k + 1 WHERE id = ?1",
	[ST_UPDATE_C] = "UPDATE sbtest SET c = ?2 WHERE id = ?1",
	[ST_DELETE] = "DELETE FROM sbtest WHERE id = ?1",
	[ST_INSERT] = "INSERT INTO sbtest (id, k, c, pad) VALUES (?1, ?2, ?3, ?4)",
	[ST_COMMIT] = "COMMIT",
};
static sqlite3_stmt *st[ST_COUNT];

static void db_exec(const char *sql)
{
	char *err = NULL;

	if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK)
		die("oltp: %s: %s", sql, err ? err : "?");
}

/* rand_text fills s (n bytes plus NUL) the way sysbench does: groups of
 * 11 digits separated by '-'. */
static void rand_text(char *s, int n)
{
	for (int i = 0; i < n; i++)
		s[i] = (i % 12 == 11) ? '-' : (char)('0' + rnd() % 10);
	s[n] = 0;
}

/* step runs statement i with its bindings to completion, returning the
 * number of rows it produced. */
static int step(int i)
{
	int rows = 0, rc;

	while ((rc = sqlite3_step(st[i])) == SQLITE_ROW)
		rows++;
	if (rc != SQLITE_DONE)
		die("oltp: %s: %s", oltp_sql[i], sqlite3_errmsg(db));
	sqlite3_reset(st[i]);
	return rows;
}

static void bind_row(sqlite3_stmt *s, int64_t id)
{
	char c[120 + 1], pad[60 + 1];

	rand_text(c, 120);
	rand_text(pad, 60);
	sqlite3_bind_int64(s, 1, id);
	sqlite3_bind_int64(s, 2, (int64_t)(rnd() % OLTP_ROWS));
	sqlite3_bind_text(s, 3, c, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(s, 4, pad, -1, SQLITE_TRANSIENT);
}

static void oltp_setup(void)
{
	snprintf(db_path, sizeof(db_path), "/tmp/lucos-workload-oltp.%d.db", (int)getpid());
	if (sqlite3_open(db_path, &db) != SQLITE_OK)
		die("oltp: open %s: %s", db_path, sqlite3_errmsg(db));
	/* The data lives on tmpfs: this measures CPU and system calls, not a
	 * disk, so nothing is synced. WAL keeps the write path realistic. */
	db_exec("PRAGMA journal_mode = WAL");
	db_exec("PRAGMA synchronous = OFF");
	db_exec("CREATE TABLE sbtest (id INTEGER PRIMARY KEY, k INTEGER NOT NULL DEFAULT 0, "
		"c TEXT NOT NULL DEFAULT '', pad TEXT NOT NULL DEFAULT '')");
	for (int i = 0; i < ST_COUNT; i++)
		if (sqlite3_prepare_v2(db, oltp_sql[i], -1, &st[i], NULL) != SQLITE_OK)
			die("oltp: prepare %s: %s", oltp_sql[i], sqlite3_errmsg(db));
	step(ST_BEGIN);
	for (int64_t id = 1; id <= OLTP_ROWS; id++) {
		bind_row(st[ST_INSERT], id);
		step(ST_INSERT);
	}
	step(ST_COMMIT);
	db_exec("CREATE INDEX k_1 ON sbtest (k)");
}

/* oltp_op is one read-write transaction as sysbench's oltp_read_write runs
 * it, scaled down: 2 point selects, a 10-row range, an update of the
 * indexed column, one of an unindexed column, and a delete and re-insert. */
static void oltp_op(void)
{
	char c[120 + 1];
	int64_t id;

	step(ST_BEGIN);
	for (int i = 0; i < 2; i++) {
		sqlite3_bind_int64(st[ST_POINT], 1, (int64_t)(rnd() % OLTP_ROWS) + 1);
		step(ST_POINT);
	}
	sqlite3_bind_int64(st[ST_RANGE], 1, (int64_t)(rnd() % (OLTP_ROWS - OLTP_RANGE)) + 1);
	if (step(ST_RANGE) != OLTP_RANGE)
		die("oltp: range select did not return %d rows", OLTP_RANGE);
	sqlite3_bind_int64(st[ST_UPDATE_K], 1, (int64_t)(rnd() % OLTP_ROWS) + 1);
	step(ST_UPDATE_K);
	rand_text(c, 120);
	sqlite3_bind_int64(st[ST_UPDATE_C], 1, (int64_t)(rnd() % OLTP_ROWS) + 1);
	sqlite3_bind_text(st[ST_UPDATE_C], 2, c, -1, SQLITE_TRANSIENT);
	step(ST_UPDATE_C);
	id = (int64_t)(rnd() % OLTP_ROWS) + 1;
	sqlite3_bind_int64(st[ST_DELETE], 1, id);
	step(ST_DELETE);
	bind_row(st[ST_INSERT], id);
	step(ST_INSERT);
	step(ST_COMMIT);
}

static void oltp_teardown(void)
{
	char path[80];

	for (int i = 0; i < ST_COUNT; i++)
		sqlite3_finalize(st[i]);
	sqlite3_close(db);
	unlink(db_path);
	snprintf(path, sizeof(path), "%s-wal", db_path);
	unlink(path);
	snprintf(path, sizeof(path), "%s-shm", db_path);
	unlink(path);
}

/* ---- the runner ------------------------------------------------------------ */

struct workload {
	const char *name;
	void (*setup)(void);    /* untimed; may be NULL */
	void (*op)(void);       /* one unit of work; dies on failure */
	void (*teardown)(void); /* untimed; may be NULL */
};

/* In the order benchmarks run them (bench/workload.Names). */
static const struct workload workloads[] = {
	{"cpu", cpu_setup, cpu_op, NULL},
	{"syscall", syscall_setup, syscall_op, NULL},
	{"fork", NULL, fork_op, NULL},
	{"fs", fs_setup, fs_op, fs_teardown},
	{"oltp", oltp_setup, oltp_op, oltp_teardown},
};
#define NWORKLOADS (sizeof(workloads) / sizeof(workloads[0]))

struct bucket {
	int64_t end_ns;
	int64_t ops;
};

/*
 * run times w for duration_ns in buckets of bucket_ns. The clock is read
 * after each batch of ops, not after every op: the batch doubles while a
 * batch takes less than 1/100 of a bucket and halves when it takes more
 * than 1/25, so clock reads stay a small, roughly constant overhead whatever
 * an op costs, and a bucket ends at most about 1/25 of a bucket (or one op)
 * late.
 */
static int run(const struct workload *w, int64_t duration_ns, int64_t bucket_ns)
{
	size_t cap = (size_t)(duration_ns / bucket_ns) + 2, n = 0;
	struct bucket *b = calloc(cap, sizeof(*b));
	int64_t start, end, deadline, last, t = 0, ops = 0, in_bucket = 0;
	int64_t batch = 1;

	if (!b)
		die("out of memory");
	if (w->setup)
		w->setup();
	start = last = now_ns();
	end = start + duration_ns;
	deadline = start + bucket_ns < end ? start + bucket_ns : end;
	for (;;) {
		for (int64_t i = 0; i < batch; i++)
			w->op();
		ops += batch;
		in_bucket += batch;
		t = now_ns();
		if (t - last < bucket_ns / 100 && batch < (1 << 20))
			batch *= 2;
		else if (t - last > bucket_ns / 25 && batch > 1)
			batch /= 2;
		last = t;
		if (t < deadline)
			continue;
		if (n < cap) {
			b[n].end_ns = t;
			b[n].ops = in_bucket;
			n++;
		}
		in_bucket = 0;
		if (t >= end)
			break;
		/* The next deadline after t: a gap longer than a bucket is one bucket. */
		while (deadline <= t)
			deadline += bucket_ns;
		if (deadline > end)
			deadline = end;
	}
	if (w->teardown)
		w->teardown();

	printf("start %lld\n", (long long)start);
	for (size_t i = 0; i < n; i++)
		printf("b %lld %lld\n", (long long)b[i].end_ns, (long long)b[i].ops);
	printf("total %lld %lld %.3f\n", (long long)ops, (long long)(t - start),
	       (double)ops * 1e9 / (double)(t - start));
	free(b);
	if (fflush(stdout) != 0 || ferror(stdout)) {
		fprintf(stderr, "%s: write output: %s\n", prog, strerror(errno));
		return 1;
	}
	return 0;
}

static int usage(void)
{
	fprintf(stderr, "usage: %s NAME SECONDS [BUCKET_MS]\n"
			"       %s list\n"
			"       %s clock\n"
			"workloads:",
		prog, prog, prog);
	for (size_t i = 0; i < NWORKLOADS; i++)
		fprintf(stderr, " %s", workloads[i].name);
	fputc('\n', stderr);
	return 2;
}

int main(int argc, char **argv)
{
	const struct workload *w = NULL;
	double seconds;
	long bucket_ms = 100;
	char *end;

	if (argc == 2 && strcmp(argv[1], "list") == 0) {
		for (size_t i = 0; i < NWORKLOADS; i++)
			printf("%s\n", workloads[i].name);
		return 0;
	}
	if (argc == 2 && strcmp(argv[1], "clock") == 0) {
		printf("%lld\n", (long long)now_ns());
		return 0;
	}
	if (argc != 3 && argc != 4)
		return usage();
	for (size_t i = 0; i < NWORKLOADS; i++)
		if (strcmp(argv[1], workloads[i].name) == 0)
			w = &workloads[i];
	if (!w) {
		fprintf(stderr, "%s: unknown workload %s\n", prog, argv[1]);
		return usage();
	}
	errno = 0;
	seconds = strtod(argv[2], &end);
	if (errno || *end || end == argv[2] || !(seconds > 0 && seconds <= 86400)) {
		fprintf(stderr, "%s: SECONDS %s: want a number in (0, 86400]\n", prog, argv[2]);
		return 2;
	}
	if (argc == 4) {
		errno = 0;
		bucket_ms = strtol(argv[3], &end, 10);
		if (errno || *end || end == argv[3] || bucket_ms < 1 || bucket_ms > 86400000) {
			fprintf(stderr, "%s: BUCKET_MS %s: want a whole number of ms >= 1\n", prog, argv[3]);
			return 2;
		}
	}
	return run(w, (int64_t)(seconds * 1e9), (int64_t)bucket_ms * 1000000);
}
