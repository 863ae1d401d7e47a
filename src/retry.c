/*-------------------------------------------------------------------------
 *
 * retry.c
 *	  The retry schedule: exponential backoff with jitter.
 *
 * After n failed attempts an event waits
 *
 *	  min(bento.retry_base_delay * 2^(n-1), bento.retry_max_delay) * (1 - 0.25 j)
 *
 * with j drawn uniformly from [0, 1): never longer than the capped value,
 * never shorter than three quarters of it, so that many events failing
 * together do not come back together.  The worker uses the same schedule
 * to pause itself after consecutive transient failures.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "common/pg_prng.h"
#include "fmgr.h"
#include "utils/timestamp.h"

#include "bento.h"

PG_FUNCTION_INFO_V1(bento_retry_delay);

/*
 * The delay in milliseconds after the given number of failed attempts
 * (values below 1 count as 1), for jitter in [0, 1].  Doubling stops at the
 * cap, so huge attempt counts cannot overflow.
 */
double
bento_backoff_ms(int attempts, double jitter)
{
	double		cap = (double) bento_retry_max_delay;
	double		delay = (double) bento_retry_base_delay;
	int			exponent = Max(attempts, 1) - 1;

	/* 2^62 times any base is above any cap we accept; stop doubling there */
	delay = ldexp(delay, Min(exponent, 62));
	if (delay > cap)
		delay = cap;
	return delay * (1.0 - BENTO_RETRY_JITTER * jitter);
}

/*
 * A random jitter for bento_backoff_ms.
 */
double
bento_random_jitter(void)
{
	return pg_prng_double(&pg_global_prng_state);
}

/*
 * bento.retry_delay(attempts integer, jitter double precision) returns interval
 *
 * The schedule as SQL sees it: used by the worker to set next_attempt_at,
 * and by the tests that check its arithmetic.  NULL jitter draws one.
 */
Datum
bento_retry_delay(PG_FUNCTION_ARGS)
{
	int32		attempts;
	double		jitter;
	double		ms;
	Interval   *result;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	attempts = PG_GETARG_INT32(0);
	jitter = PG_ARGISNULL(1) ? bento_random_jitter() : PG_GETARG_FLOAT8(1);
	if (!(jitter >= 0.0 && jitter <= 1.0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("jitter must be between 0 and 1")));

	ms = bento_backoff_ms(attempts, jitter);

	result = (Interval *) palloc0(sizeof(Interval));
	result->time = (TimeOffset) rint(ms * 1000.0);
	PG_RETURN_INTERVAL_P(result);
}
