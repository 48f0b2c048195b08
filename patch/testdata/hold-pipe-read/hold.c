// A test patch that changes nothing: pipe_read forwards to its original
// body. A task blocked reading an empty pipe in the old pipe_read holds the
// update in its transition; a task blocked after the switch waits in patch
// code. (Not a sleep: busybox init sleeps a second in its main loop, and
// everything that sleeps would hold a patch of do_nanosleep.)
#include <linux/fs.h>
#include <linux/uio.h>
#include <lucos/patch.h>

LUCOS_PATCH("hold-pipe-read", "forward pipe_read to its original body");

extern ssize_t LUCOS_ORIG(pipe_read)(struct kiocb *iocb, struct iov_iter *to);

static ssize_t new_pipe_read(struct kiocb *iocb, struct iov_iter *to)
{
	ssize_t ret = LUCOS_ORIG(pipe_read)(iocb, to);

	/* Code after the call: no tail call, so a blocked reader has a frame here. */
	barrier();
	return ret;
}
LUCOS_REPLACE(pipe_read, new_pipe_read);
