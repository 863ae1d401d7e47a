/*-------------------------------------------------------------------------
 *
 * guc.c
 *	  The bento.* settings.
 *
 * Every setting can be changed with a reload (SIGHUP).  The worker picks up
 * new values at the top of its next round; a change of bento.database makes
 * it exit so that the postmaster starts it again in the new database.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/guc.h"

#include "bento.h"

char	   *bento_api_url = NULL;
char	   *bento_site_uuid = NULL;
char	   *bento_publishable_key = NULL;
char	   *bento_secret_key = NULL;
char	   *bento_secret_key_file = NULL;
char	   *bento_database = NULL;
int			bento_batch_size = BENTO_MAX_BATCH_SIZE;
int			bento_max_requests_per_minute = 60;
int			bento_request_timeout = 30 * 1000;
int			bento_poll_interval = 1000;
int			bento_retry_base_delay = 5 * 1000;
int			bento_retry_max_delay = 60 * 60 * 1000;
int			bento_max_attempts = 100;
int			bento_max_retry_age = 3 * 24 * 60 * 60;
int			bento_retention = 7 * 24 * 60 * 60;
int			bento_dedupe_window = 30 * 24 * 60 * 60;

/*
 * Refuse an API URL the worker must not post to: anything but https://,
 * except http:// to a loopback address (the mock server used by tests and
 * the demo).
 */
static bool
check_api_url(char **newval, void **extra, GucSource source)
{
	const char *problem;

	if (*newval == NULL || (*newval)[0] == '\0')
	{
		GUC_check_errdetail("The Bento API URL must not be empty.");
		return false;
	}

	problem = bento_http_url_problem(*newval);
	if (problem != NULL)
	{
		GUC_check_errdetail("%s", problem);
		return false;
	}
	return true;
}

/*
 * Define the bento.* settings.  Called from _PG_init in every process that
 * loads the library, so that SHOW and ALTER SYSTEM know them everywhere.
 */
void
bento_define_gucs(void)
{
	DefineCustomStringVariable("bento.api_url",
							   "Base URL of the Bento API.",
							   "The worker posts to {bento.api_url}/batch/events. "
							   "Only https:// is accepted, except http:// to a loopback address.",
							   &bento_api_url,
							   "https://app.bentonow.com/api/v1",
							   PGC_SIGHUP,
							   0,
							   check_api_url, NULL, NULL);

	DefineCustomStringVariable("bento.site_uuid",
							   "Bento site UUID the events are sent to.",
							   NULL,
							   &bento_site_uuid,
							   "",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("bento.publishable_key",
							   "Bento publishable key (HTTP Basic auth user name).",
							   NULL,
							   &bento_publishable_key,
							   "",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("bento.secret_key",
							   "Bento secret key (HTTP Basic auth password).",
							   "Visible to superusers only.",
							   &bento_secret_key,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("bento.secret_key_file",
							   "File holding the Bento secret key.",
							   "When set, bento.secret_key is ignored. The file must not be readable by group or others; "
							   "a relative path is relative to the data directory.",
							   &bento_secret_key_file,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("bento.database",
							   "Database whose outbox the bento worker delivers.",
							   "Changing it makes the worker restart in the new database.",
							   &bento_database,
							   "postgres",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("bento.batch_size",
							"Largest number of events sent in one request.",
							NULL,
							&bento_batch_size,
							BENTO_MAX_BATCH_SIZE,
							1, BENTO_MAX_BATCH_SIZE,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("bento.max_requests_per_minute",
							"Largest number of requests sent to Bento in any 60-second window.",
							"0 removes the limit.",
							&bento_max_requests_per_minute,
							60,
							0, 100000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("bento.request_timeout",
							"Time limit for one request to Bento, from connect to last byte.",
							"Connecting alone may take at most 10 seconds or this limit, whichever is shorter.",
							&bento_request_timeout,
							30 * 1000,
							100, 10 * 60 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("bento.poll_interval",
							"Time between checks of the outbox when nothing wakes the worker.",
							"Committed calls of bento_track() wake the worker at once.",
							&bento_poll_interval,
							1000,
							10, 60 * 60 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("bento.retry_base_delay",
							"Delay before the first retry of a batch that failed for a transient reason.",
							"Each further attempt doubles it, up to bento.retry_max_delay.",
							&bento_retry_base_delay,
							5 * 1000,
							10, 24 * 60 * 60 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("bento.retry_max_delay",
							"Longest delay between two attempts to deliver an event.",
							NULL,
							&bento_retry_max_delay,
							60 * 60 * 1000,
							10, 24 * 60 * 60 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("bento.max_attempts",
							"Attempts after which a transiently failing event is given up as dead.",
							"0 removes the limit. Answers 429 and split batches do not count.",
							&bento_max_attempts,
							100,
							0, 1000000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("bento.max_retry_age",
							"Time after which a transiently failing event is given up as dead.",
							"Counted from when the event was queued (or last requeued). 0 removes the limit.",
							&bento_max_retry_age,
							3 * 24 * 60 * 60,
							0, 365 * 24 * 60 * 60,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("bento.retention",
							"How long sent events and delivery records are kept.",
							"Older ones are deleted by the worker in small batches. 0 keeps them forever.",
							&bento_retention,
							7 * 24 * 60 * 60,
							0, 10 * 365 * 24 * 60 * 60,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("bento.dedupe_window",
							"How long an external_id is remembered after it was queued.",
							"Within the window bento_track() queues an external_id once, even after retention deleted the event. 0 remembers forever.",
							&bento_dedupe_window,
							30 * 24 * 60 * 60,
							0, 10 * 365 * 24 * 60 * 60,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);
}
