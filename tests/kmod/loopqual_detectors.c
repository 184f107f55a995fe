// SPDX-License-Identifier: GPL-2.0
/*
 * loopqual_detectors: makes exactly one kernel bug of the kind named by its `trigger`
 * parameter, so that loopqual's selftest can prove that the debug kernel's detectors
 * (KASAN, KFENCE, UBSAN, lockdep, PROVE_RCU, DEBUG_OBJECTS, DEBUG_LIST, kmemleak) report it
 * and that loopqual classifies the report. Loaded only by tests/detectors in a throw-away
 * loopqual guest running the debug kernel: never load it anywhere else.
 *
 *   insmod loopqual_detectors.ko trigger=kasan|kfence|ubsan|lockdep|rcu|odebug|list|leak|none
 *                                        |lockdep_recursive|lockdep_inconsistent
 *
 * The bug happens during insmod; the module then stays loaded (rmmod it), so that a leak's
 * backtrace still resolves to [loopqual_detectors] when kmemleak is read.
 */
#include <linux/compiler.h>
#include <linux/delay.h>
#include <linux/jiffies.h>
#include <linux/kfence.h>
#include <linux/list.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/rcupdate.h>
#include <linux/sched.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/timer.h>

static char *trigger = "none";
module_param(trigger, charp, 0444);
MODULE_PARM_DESC(trigger, "the one bug to make at load: kasan kfence ubsan lockdep rcu odebug list leak "
		 "lockdep_recursive lockdep_inconsistent none");

/* KASAN: one byte written just past a kmalloc'ed object (slab-out-of-bounds). */
static noinline int lq_kasan(void)
{
	size_t size = 123;
	char *p = kmalloc(size, GFP_KERNEL);

	if (!p)
		return -ENOMEM;
	OPTIMIZER_HIDE_VAR(p);
	OPTIMIZER_HIDE_VAR(size);
	((volatile char *)p)[size] = 'x';
	kfree(p);
	return 0;
}

/*
 * KFENCE: allocate until KFENCE samples one of our objects, write past it, free it. KFENCE
 * hands its next guarded object to whichever allocation comes first once its sample timer
 * fires, so the loop allocates without sleeping (a loop that slept between allocations lost
 * every sample to the rest of the guest for 60 s under load, stop 16); the scenario also
 * shortens kfence.sample_interval while it runs.
 */
static noinline int lq_kfence(void)
{
	unsigned long end = jiffies + 60 * HZ;
	size_t size = 32;
	unsigned long n = 0;

	while (time_before(jiffies, end)) {
		char *p = kmalloc(size, GFP_KERNEL);

		if (!p)
			return -ENOMEM;
		n++;
		if (is_kfence_address(p)) {
			OPTIMIZER_HIDE_VAR(p);
			OPTIMIZER_HIDE_VAR(size);
			((volatile char *)p)[size] = 'x';
			kfree(p);
			return 0;
		}
		kfree(p);
		cond_resched();
	}
	pr_err("loopqual_detectors: KFENCE gave none of %lu allocations in 60 s a guarded object\n",
	       n);
	return -EAGAIN;
}

/* UBSAN: an index past a fixed-size array, landing on the next field (no memory is harmed). */
static struct {
	int a[4];
	int after;
} lq_ubsan_data;

static noinline int lq_ubsan(void)
{
	volatile int idx = 4;

	lq_ubsan_data.a[idx] = 1;
	return 0;
}

/* lockdep: A then B, later B then A, in one thread one after the other: no deadlock, but
 * lockdep sees the inversion. (lockdep turns itself off after its first report.) */
static DEFINE_MUTEX(lq_lock_a);
static DEFINE_MUTEX(lq_lock_b);

static noinline int lq_lockdep(void)
{
	mutex_lock(&lq_lock_a);
	mutex_lock(&lq_lock_b);
	mutex_unlock(&lq_lock_b);
	mutex_unlock(&lq_lock_a);

	mutex_lock(&lq_lock_b);
	mutex_lock(&lq_lock_a);
	mutex_unlock(&lq_lock_a);
	mutex_unlock(&lq_lock_b);
	return 0;
}

/* lockdep, recursive: two spinlocks of one class (initialised at one place) nested without
 * a subclass: lockdep cannot tell them apart, and no lock is ever waited for. */
static spinlock_t lq_same_class[2];

static noinline void lq_init_same_class(spinlock_t *l)
{
	spin_lock_init(l);
}

static noinline int lq_lockdep_recursive(void)
{
	lq_init_same_class(&lq_same_class[0]);
	lq_init_same_class(&lq_same_class[1]);
	spin_lock(&lq_same_class[0]);
	spin_lock(&lq_same_class[1]);
	spin_unlock(&lq_same_class[1]);
	spin_unlock(&lq_same_class[0]);
	return 0;
}

/* lockdep, inconsistent: a spinlock taken with softirqs on, then in a timer (softirq). */
static DEFINE_SPINLOCK(lq_bh_lock);
static struct timer_list lq_bh_timer;

static void lq_bh_timer_fn(struct timer_list *t)
{
	spin_lock(&lq_bh_lock);
	spin_unlock(&lq_bh_lock);
}

static noinline int lq_lockdep_inconsistent(void)
{
	spin_lock(&lq_bh_lock);
	spin_unlock(&lq_bh_lock);
	timer_setup(&lq_bh_timer, lq_bh_timer_fn, 0);
	mod_timer(&lq_bh_timer, jiffies + 1);
	msleep(500);
	del_timer_sync(&lq_bh_timer);
	return 0;
}

/* PROVE_RCU: rcu_dereference() outside any RCU read-side critical section. */
static int lq_rcu_target;
static int __rcu *lq_rcu_ptr = (int __rcu *)&lq_rcu_target;

static noinline int lq_rcu(void)
{
	int *p = rcu_dereference(lq_rcu_ptr);

	OPTIMIZER_HIDE_VAR(p);
	return *(volatile int *)p;
}

/* DEBUG_OBJECTS: free an armed timer (debugobjects reports it and deactivates the timer). */
struct lq_timed {
	struct timer_list timer;
};

static void lq_timer_fn(struct timer_list *t)
{
}

static noinline int lq_odebug(void)
{
	struct lq_timed *t = kzalloc(sizeof(*t), GFP_KERNEL);

	if (!t)
		return -ENOMEM;
	timer_setup(&t->timer, lq_timer_fn, 0);
	mod_timer(&t->timer, jiffies + 3600 * HZ);
	OPTIMIZER_HIDE_VAR(t);
	kfree(t);
	return 0;
}

/* DEBUG_LIST: the same entry added twice (the check refuses the second add: list intact). */
static LIST_HEAD(lq_list);
static struct list_head lq_entry;

static noinline int lq_list_twice(void)
{
	list_add(&lq_entry, &lq_list);
	list_add(&lq_entry, &lq_list);
	list_del(&lq_entry);
	return 0;
}

/* kmemleak: an allocation whose only pointer is dropped. */
static noinline int lq_leak(void)
{
	char *p = kmalloc(200, GFP_KERNEL);

	if (!p)
		return -ENOMEM;
	OPTIMIZER_HIDE_VAR(p);  /* before the memset, or the compiler drops it as a dead store */
	memset(p, 0x5a, 200);
	p = NULL;
	return 0;
}

static const struct {
	const char *name;
	int (*fn)(void);
} lq_triggers[] = {
	{ "kasan", lq_kasan },   { "kfence", lq_kfence }, { "ubsan", lq_ubsan },
	{ "lockdep", lq_lockdep }, { "rcu", lq_rcu },     { "odebug", lq_odebug },
	{ "list", lq_list_twice }, { "leak", lq_leak },
	{ "lockdep_recursive", lq_lockdep_recursive },
	{ "lockdep_inconsistent", lq_lockdep_inconsistent },
};

static int __init lq_init(void)
{
	int i;

	if (!strcmp(trigger, "none"))
		return 0;
	for (i = 0; i < ARRAY_SIZE(lq_triggers); i++) {
		if (!strcmp(trigger, lq_triggers[i].name)) {
			pr_info("loopqual_detectors: trigger %s\n", trigger);
			return lq_triggers[i].fn() < 0 ? -EAGAIN : 0;
		}
	}
	pr_err("loopqual_detectors: unknown trigger '%s'\n", trigger);
	return -EINVAL;
}

static void __exit lq_exit(void)
{
}

module_init(lq_init);
module_exit(lq_exit);
MODULE_DESCRIPTION("loopqual selftest: makes one kernel bug on request (debug kernels only)");
MODULE_LICENSE("GPL");
