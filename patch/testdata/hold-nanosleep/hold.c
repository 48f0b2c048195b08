// A test patch that changes nothing: do_nanosleep forwards to its original
// body. A task asleep in the old do_nanosleep holds the update in its
// transition; a task asleep after the switch sleeps in patch code.
#include <linux/hrtimer.h>
#include <lucos/patch.h>

LUCOS_PATCH("hold-nanosleep", "forward do_nanosleep to its original body");

extern int LUCOS_ORIG(do_nanosleep)(struct hrtimer_sleeper *t, enum hrtimer_mode mode);

static int new_do_nanosleep(struct hrtimer_sleeper *t, enum hrtimer_mode mode)
{
	int ret = LUCOS_ORIG(do_nanosleep)(t, mode);

	/* Code after the call: no tail call, so a sleeper has a frame here. */
	barrier();
	return ret;
}
LUCOS_REPLACE(do_nanosleep, new_do_nanosleep);
