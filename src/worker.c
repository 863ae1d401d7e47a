/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  The bento background worker: claim, send, record; sleep and wake.
 *
 * One round: claim a batch of due events in a short transaction, post it
 * to Bento with no transaction open, record the outcome in a new
 * transaction.  When a round sent something the next starts at once; when
 * nothing was due the worker sleeps until a committing bento_track() sets
 * its latch or bento.poll_interval passes.  Requests are paced so that no
 * 60-second window holds more than bento.max_requests_per_minute of them,
 * and a rate limit (429) or a transient failure pauses the whole sender.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>
#include <math.h>
#include <sys/stat.h>

#include "access/xact.h"
#include "catalog/pg_extension.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/pmsignal.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "bento.h"
#include "compat.h"

/* Default pause after a 429 that did not say how long to wait. */
#define DEFAULT_RETRY_AFTER_MS (60 * 1000)
/* Longest Retry-After honoured. */
#define MAX_RETRY_AFTER_MS (60 * 60 * 1000)

/* The database this worker connected to; a change means a restart. */
static char *worker_database = NULL;

/* Extension OID at claim time; a different one at record time = dropped. */
static Oid	extension_oid = InvalidOid;
static bool recovered = false;

/* The secret key in force: bento.secret_key or the file's contents. */
static char *secret_key = NULL;

/* Things said once until they change. */
static bool said_not_configured = false;
static bool said_no_extension = false;

/* The whole sender waits until this time (429 or transient failure). */
static TimestampTz paused_until = 0;
static int	consecutive_failures = 0;

/*
 * Smaller batches than bento.batch_size:
 *
 * While the events of a batch that Bento refused with a 400 are sent again
 * (ids up to split_upto_id), batches are split_size: halved after each
 * refusal, kept after an accepted batch, doubled once a bad event was
 * isolated and refused alone.  A binary search for the bad events.
 *
 * After Bento reported failures it did not list, batches are at most
 * itemize_size (the number it lists), doubled after each batch without such
 * failures.
 */
static int64 split_upto_id = 0;
static int	split_size = BENTO_MAX_BATCH_SIZE;
static int	itemize_size = BENTO_MAX_BATCH_SIZE;

/* Retention runs when the worker is idle, at most this often. */
#define RETENTION_INTERVAL_MS (60 * 1000)
#define RETENTION_BATCH 1000
#define RETENTION_MAX_BATCHES 100
static TimestampTz last_retention = 0;

/* Send times of the most recent requests, a ring of max_requests_per_minute. */
static TimestampTz *sent_times = NULL;
static int	sent_capacity = 0;
static int	sent_head = 0;		/* oldest entry */
static int	sent_count = 0;

static MemoryContext WorkerContext = NULL;
static MemoryContext BatchContext = NULL;

/*
 * Register the worker at postmaster start.
 */
void
bento_register_worker(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	/* never on a hot standby: the worker starts after promotion */
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 5;
	strlcpy(worker.bgw_library_name, "bento", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "bento_worker_main", BGW_MAXLEN);
	strlcpy(worker.bgw_name, "bento worker", BGW_MAXLEN);
	strlcpy(worker.bgw_type, "bento", BGW_MAXLEN);
	worker.bgw_main_arg = (Datum) 0;
	worker.bgw_notify_pid = 0;

	RegisterBackgroundWorker(&worker);
}

/*
 * on_shmem_exit callback: stop advertising our latch.
 */
static void
unpublish_worker(int code, Datum arg)
{
	if (bento_shared != NULL && bento_shared->worker_pid == MyProcPid)
	{
		bento_shared->worker_latch = NULL;
		bento_shared->worker_pid = 0;
	}
}

/*
 * Start a unit of database work: transaction, SPI, snapshot, activity.
 */
static void
begin_step(const char *activity)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, activity);

	/*
	 * The outbox changes faster than its statistics: a fresh backlog looks
	 * tiny to the planner.  Our statements are all "first N in id order" or
	 * "these ids", for which an index scan is always right; forbid the plans
	 * that read the whole queue, for this transaction only.
	 */
	(void) set_config_option("enable_seqscan", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_LOCAL, true, 0, false);
	(void) set_config_option("enable_bitmapscan", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_LOCAL, true, 0, false);
}

/*
 * Finish a unit of database work begun with begin_step, committing it.
 */
static void
end_step(void)
{
	PopActiveSnapshot();
	SPI_finish();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/*
 * Milliseconds from now until t, at least 0.
 */
static long
ms_until(TimestampTz t)
{
	TimestampTz now = GetCurrentTimestamp();

	if (t <= now)
		return 0;
	return (long) ((t - now + 999) / 1000);
}

/*
 * Keep the ring of send times as large as bento.max_requests_per_minute,
 * keeping the most recent entries when it changes.
 */
static void
resize_rate_window(void)
{
	int			want = bento_max_requests_per_minute;
	TimestampTz *ring;
	int			keep;

	if (want == sent_capacity)
		return;
	if (want == 0)
	{
		if (sent_times)
			pfree(sent_times);
		sent_times = NULL;
		sent_capacity = sent_head = sent_count = 0;
		return;
	}

	ring = MemoryContextAlloc(WorkerContext, sizeof(TimestampTz) * want);
	keep = Min(sent_count, want);
	for (int i = 0; i < keep; i++)
		ring[i] = sent_times[(sent_head + sent_count - keep + i) % sent_capacity];
	if (sent_times)
		pfree(sent_times);
	sent_times = ring;
	sent_capacity = want;
	sent_head = 0;
	sent_count = keep;
}

/*
 * How long before another request may be sent without exceeding
 * bento.max_requests_per_minute in the last 60 seconds.
 */
static long
rate_limit_wait_ms(void)
{
	resize_rate_window();
	if (sent_capacity == 0 || sent_count < sent_capacity)
		return 0;
	return ms_until(sent_times[sent_head] + 60 * USECS_PER_SEC);
}

/*
 * Note that a request is being sent now.
 */
static void
note_request_sent(void)
{
	resize_rate_window();
	if (sent_capacity == 0)
		return;
	if (sent_count < sent_capacity)
		sent_times[(sent_head + sent_count++) % sent_capacity] = GetCurrentTimestamp();
	else
	{
		sent_times[sent_head] = GetCurrentTimestamp();
		sent_head = (sent_head + 1) % sent_capacity;
	}
}

/*
 * Fill in a decision's reason: label ("HTTP 503"), excerpt and row_error.
 */
static void
set_reason(BentoDecision *decision, char *label, const char *excerpt)
{
	decision->label = label;
	decision->excerpt = pstrdup(excerpt[0] ? excerpt : "(empty response)");
	decision->row_error = psprintf("%s: %s", decision->label, decision->excerpt);
}

/*
 * Turn the result of a request into a decision about its events.  See the
 * README's table "What happens to a batch".
 */
static void
decide(BentoBatch *batch, BentoHttpResult *http, BentoResponse *response,
	   BentoDecision *decision)
{
	long		status = http->http_status;
	char	   *excerpt = bento_sanitize_excerpt(http->body, http->body_len, 300, true);
	bool		complete = (http->curl_code == 0 || http->body_overflow) && status != 0;

	memset(decision, 0, sizeof(*decision));
	decision->counts_attempt = true;
	decision->backoff = true;
	decision->jitter = bento_random_jitter();

	if (http->body_overflow)
		ereport(LOG,
				(errmsg("Bento answered HTTP %ld with a body over %d bytes for delivery " INT64_FORMAT "; reading stopped",
						status, BENTO_MAX_READ_BYTES, batch->delivery_id)));

	if (!complete)
	{
		/*
		 * No complete answer.  If the request left us, Bento may have queued
		 * it: the outcome is unknown, and the events are sent again.
		 */
		decision->outcome = http->request_sent ? BENTO_OUTCOME_UNKNOWN : BENTO_OUTCOME_RETRY;
		if (status != 0)
			set_reason(decision, psprintf("HTTP %ld with an incomplete response", status), http->error);
		else
			set_reason(decision, pstrdup("request failed"), http->error);
	}
	else if (status >= 200 && status < 300)
	{
		decision->outcome = (response->nerrors > 0) ? BENTO_OUTCOME_PARTIAL : BENTO_OUTCOME_DELIVERED;
		set_reason(decision, psprintf("HTTP %ld", status), excerpt);
		decision->unitemized = (response->failed > response->nerrors);
		if (decision->unitemized)
			ereport(WARNING,
					(errmsg("Bento rejected %d events of delivery " INT64_FORMAT " but named only %d of them",
							response->failed, batch->delivery_id, response->nerrors),
					 errdetail("The events it did not name are marked sent; the next batches are cut to %d events so that every rejection is named.",
							   BENTO_MAX_ITEMIZED_ERRORS)));
		if (!response->parsed)
			ereport(LOG,
					(errmsg("Bento answered HTTP %ld with a body that is not JSON for delivery " INT64_FORMAT,
							status, batch->delivery_id),
					 errdetail("The events are marked sent: a 2xx status means Bento queued them. Body: %s",
							   excerpt)));
	}
	else if (status == 429)
	{
		/* rate limited: wait as told; the attempt does not count */
		decision->outcome = BENTO_OUTCOME_RETRY;
		decision->counts_attempt = false;
		decision->backoff = false;
		decision->retry_after_ms = (http->retry_after_ms >= 0) ?
			Min(http->retry_after_ms, MAX_RETRY_AFTER_MS) : DEFAULT_RETRY_AFTER_MS;
		set_reason(decision, pstrdup("HTTP 429 (rate limited)"), excerpt);
	}
	else if (status >= 500)
	{
		decision->outcome = BENTO_OUTCOME_RETRY;
		set_reason(decision, psprintf("HTTP %ld", status), excerpt);
	}
	else if (status == 400 && batch->nevents > 1)
	{
		/*
		 * The batch as a whole was refused: some event in it is bad.  Send
		 * the events again in halves until the bad ones stand alone; the
		 * split does not count as an attempt.
		 */
		decision->outcome = BENTO_OUTCOME_SPLIT;
		decision->counts_attempt = false;
		decision->backoff = false;
		set_reason(decision,
				   psprintf("HTTP 400 for a batch of %d events, split to find the bad ones",
							batch->nevents),
				   response->error ? response->error : excerpt);
	}
	else
	{
		/* 422 (every event rejected), 400 for one event, any other: final */
		decision->outcome = BENTO_OUTCOME_REJECTED;
		set_reason(decision, psprintf("HTTP %ld", status),
				   response->error ? response->error : excerpt);
	}
}

/*
 * Load the secret key in force: the first line of bento.secret_key_file
 * when that is set, else bento.secret_key.  Called at start and after each
 * reload.  A file that cannot be used is reported (never its contents) and
 * leaves the worker without a secret, so it idles.
 */
static void
load_secret_key(void)
{
	char		path[MAXPGPATH];
	FILE	   *file;
	struct stat st;
	char		line[1024];
	size_t		len;

	if (secret_key != NULL)
	{
		explicit_bzero(secret_key, strlen(secret_key));
		pfree(secret_key);
		secret_key = NULL;
	}

	if (bento_secret_key_file[0] == '\0')
	{
		secret_key = MemoryContextStrdup(WorkerContext, bento_secret_key);
		return;
	}

	if (is_absolute_path(bento_secret_key_file))
		strlcpy(path, bento_secret_key_file, sizeof(path));
	else
		snprintf(path, sizeof(path), "%s/%s", DataDir, bento_secret_key_file);
	canonicalize_path(path);

	file = AllocateFile(path, "r");
	if (file == NULL)
	{
		ereport(LOG,
				(errcode_for_file_access(),
				 errmsg("could not open bento.secret_key_file \"%s\": %m", path)));
		return;
	}
	if (fstat(fileno(file), &st) != 0 ||
		(st.st_mode & (S_IRWXG | S_IRWXO)) != 0)
	{
		ereport(LOG,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("bento.secret_key_file \"%s\" is readable by group or others; it is not used", path),
				 errhint("Run chmod 600 on the file.")));
		FreeFile(file);
		return;
	}
	if (fgets(line, sizeof(line), file) == NULL)
		line[0] = '\0';
	FreeFile(file);

	len = strlen(line);
	while (len > 0 && isspace((unsigned char) line[len - 1]))
		line[--len] = '\0';
	secret_key = MemoryContextStrdup(WorkerContext, line);
	explicit_bzero(line, sizeof(line));
	if (len == 0)
		ereport(LOG,
				(errmsg("bento.secret_key_file \"%s\" is empty", path)));
}

/*
 * Are the credentials set?  Says so once when they are not.
 */
static bool
check_configured(void)
{
	if (bento_site_uuid[0] != '\0' && bento_publishable_key[0] != '\0' &&
		secret_key != NULL && secret_key[0] != '\0')
	{
		said_not_configured = false;
		return true;
	}
	if (!said_not_configured)
		ereport(LOG,
				(errmsg("bento worker is idle: credentials are not configured"),
				 errhint("Set bento.site_uuid, bento.publishable_key and bento.secret_key_file (or bento.secret_key), then reload the configuration.")));
	said_not_configured = true;
	return false;
}

/*
 * Claim a batch.  Returns false when the extension is not installed in
 * this database (said once).
 */
static bool
claim(BentoBatch *batch)
{
	bool		present;

	begin_step("bento: claiming events");
	extension_oid = get_extension_oid("bento", true);
	present = OidIsValid(extension_oid);
	if (present)
	{
		said_no_extension = false;
		if (!recovered)
		{
			bento_recover_in_flight();
			recovered = true;
		}
		bento_claim_batch(Min(bento_batch_size,
							  Min(itemize_size,
								  split_upto_id > 0 ? split_size : BENTO_MAX_BATCH_SIZE)),
						  split_upto_id > 0 ? split_upto_id : PG_INT64_MAX,
						  batch, BatchContext);
	}
	else
	{
		recovered = false;
		batch->nevents = 0;
	}
	end_step();

	if (!present && !said_no_extension)
		ereport(LOG,
				(errmsg("bento worker is idle: extension \"bento\" is not installed in database \"%s\"",
						worker_database),
				 errhint("Run CREATE EXTENSION bento in that database, or set bento.database.")));
	said_no_extension = !present;
	return present;
}

/*
 * Record a finished request, unless the extension was dropped (or dropped
 * and created again) while it was in flight.
 */
static void
record(BentoBatch *batch, BentoHttpResult *http, BentoResponse *response,
	   BentoDecision *decision)
{
	begin_step("bento: recording delivery");
	if (get_extension_oid("bento", true) == extension_oid)
		bento_record_result(batch, http, response, decision);
	else
		ereport(LOG,
				(errmsg("bento did not record delivery " INT64_FORMAT ": the extension was dropped while it was in flight",
						batch->delivery_id)));
	end_step();
}

/*
 * After a request: pause the sender on transient failures, and set the
 * size of the next batches (split a rejected batch, cut batches when Bento
 * did not list every rejection, grow back after success).
 */
static void
adjust_after(BentoBatch *batch, BentoHttpResult *http, BentoDecision *decision)
{
	int64		last_id = batch->events[batch->nevents - 1].id;

	switch (decision->outcome)
	{
		case BENTO_OUTCOME_RETRY:
		case BENTO_OUTCOME_UNKNOWN:
			{
				long		pause_ms;

				if (decision->counts_attempt)
					consecutive_failures++;
				pause_ms = Max((long) ceil(bento_backoff_ms(Max(consecutive_failures, 1),
															decision->jitter)),
							   (long) decision->retry_after_ms);
				if (!http->aborted)
					ereport(LOG,
							(errmsg("bento delivery " INT64_FORMAT " of %d events will be retried: %s",
									batch->delivery_id, batch->nevents, decision->row_error),
							 errdetail("The worker pauses for %ld ms.", pause_ms)));
				paused_until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), pause_ms);
				break;
			}
		case BENTO_OUTCOME_SPLIT:
			consecutive_failures = 0;
			split_upto_id = Max(split_upto_id, last_id);
			split_size = Max(1, batch->nevents / 2);
			ereport(LOG,
					(errmsg("bento delivery " INT64_FORMAT " of %d events was refused with HTTP 400; sending them again in batches of %d",
							batch->delivery_id, batch->nevents, split_size),
					 errdetail("Bento said: %s", decision->excerpt)));
			break;
		case BENTO_OUTCOME_DELIVERED:
		case BENTO_OUTCOME_PARTIAL:
		case BENTO_OUTCOME_REJECTED:
			consecutive_failures = 0;
			if (decision->unitemized)
				itemize_size = BENTO_MAX_ITEMIZED_ERRORS;
			else
				itemize_size = Min(itemize_size * 2, BENTO_MAX_BATCH_SIZE);
			if (split_upto_id > 0)
			{
				if (last_id >= split_upto_id)
					split_upto_id = 0;	/* the refused batch is through */
				else if (decision->outcome == BENTO_OUTCOME_REJECTED &&
						 batch->nevents == 1)
					split_size = Min(split_size * 2, BENTO_MAX_BATCH_SIZE);
			}
			break;
	}
}

/*
 * Retention: delete sent events and delivery records older than
 * bento.retention and external_ids older than bento.dedupe_window, a
 * thousand rows per short transaction.  Runs at most once a minute (more
 * often when the retention is shorter), between two requests or when there
 * is nothing to send, so that a busy worker does not starve it.
 */
static void
run_retention(void)
{
	long		interval_ms = RETENTION_INTERVAL_MS;
	uint64		deleted[3] = {0, 0, 0};

	if (bento_retention > 0)
		interval_ms = Min(interval_ms, (long) bento_retention * 1000);
	if (bento_dedupe_window > 0)
		interval_ms = Min(interval_ms, (long) bento_dedupe_window * 1000);
	if (last_retention != 0 &&
		!TimestampDifferenceExceeds(last_retention, GetCurrentTimestamp(), interval_ms))
		return;
	last_retention = GetCurrentTimestamp();

	for (int which = BENTO_PURGE_SENT; which <= BENTO_PURGE_DEDUPE; which++)
	{
		for (int i = 0; i < RETENTION_MAX_BATCHES && !ShutdownRequestPending; i++)
		{
			uint64		n;

			begin_step("bento: deleting expired rows");
			n = OidIsValid(get_extension_oid("bento", true)) ?
				bento_purge_batch(which, RETENTION_BATCH) : 0;
			end_step();
			deleted[which] += n;
			if (n < RETENTION_BATCH)
				break;
			CHECK_FOR_INTERRUPTS();
		}
	}

	if (deleted[0] + deleted[1] + deleted[2] > 0)
		ereport(DEBUG1,
				(errmsg("bento retention deleted " UINT64_FORMAT " sent events, " UINT64_FORMAT " delivery records and " UINT64_FORMAT " external_ids",
						deleted[0], deleted[1], deleted[2])));
}

/*
 * One round of work.  Returns how long to sleep before the next round:
 * 0 means "at once".
 */
static long
run_round(void)
{
	BentoBatch	batch;
	BentoHttpResult http;
	BentoResponse response;
	BentoDecision decision;
	char	   *body;
	size_t		body_len;
	long		wait_ms;

	if (!check_configured())
		return bento_poll_interval;

	wait_ms = Max(ms_until(paused_until), rate_limit_wait_ms());
	if (wait_ms > 0)
		return Min(wait_ms, bento_poll_interval);

	if (!claim(&batch))
		return bento_poll_interval;
	if (batch.nevents == 0)
	{
		if (split_upto_id > 0)
		{
			/* the rejected batch's range is done (or waits): back to normal */
			split_upto_id = 0;
			return 0;
		}
		run_retention();
		return bento_poll_interval;
	}

	body = bento_build_batch_body(batch.events, batch.nevents, &body_len);

	pgstat_report_activity(STATE_RUNNING,
							psprintf("bento: sending %d events (delivery " INT64_FORMAT ")",
									 batch.nevents, batch.delivery_id));
	note_request_sent();
	bento_http_post_batch(body, body_len, secret_key, &http);
	pgstat_report_activity(STATE_IDLE, NULL);

	/* Without a postmaster, touch nothing: the rows are recovered later. */
	if (!PostmasterIsAlive())
		proc_exit(1);

	bento_parse_response(http.body, &response);
	decide(&batch, &http, &response, &decision);
	record(&batch, &http, &response, &decision);

	adjust_after(&batch, &http, &decision);
	run_retention();
	return 0;
}

/*
 * Entry point of the bento worker.
 */
void
bento_worker_main(Datum main_arg)
{
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();

	WorkerContext = AllocSetContextCreate(TopMemoryContext,
										  "bento worker",
										  ALLOCSET_DEFAULT_SIZES);
	BatchContext = AllocSetContextCreate(WorkerContext,
										 "bento batch",
										 ALLOCSET_DEFAULT_SIZES);
	worker_database = MemoryContextStrdup(WorkerContext, bento_database);

	BackgroundWorkerInitializeConnection(worker_database, NULL, 0);

	/* Our statements name every object; don't let a schema redirect them. */
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);
	/* A misestimated statement must not pay for JIT compilation each batch. */
	SetConfigOption("jit", "off", PGC_SUSET, PGC_S_OVERRIDE);

	bento_http_init();
	load_secret_key();

	if (bento_shared != NULL)
	{
		bento_shared->worker_pid = MyProcPid;
		bento_shared->worker_latch = MyLatch;
		on_shmem_exit(unpublish_worker, (Datum) 0);
	}

	ereport(LOG,
			(errmsg("bento worker started in database \"%s\"", worker_database)));

	while (!ShutdownRequestPending)
	{
		long		sleep_ms;

		CHECK_FOR_INTERRUPTS();

		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			load_secret_key();
			if (strcmp(bento_database, worker_database) != 0)
			{
				ereport(LOG,
						(errmsg("bento worker restarting: bento.database changed from \"%s\" to \"%s\"",
								worker_database, bento_database)));
				proc_exit(1);
			}
		}

		MemoryContextReset(BatchContext);
		MemoryContextSwitchTo(BatchContext);
		sleep_ms = run_round();
		MemoryContextSwitchTo(WorkerContext);

		if (sleep_ms > 0 && !ShutdownRequestPending)
		{
			(void) WaitLatch(MyLatch,
							 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 sleep_ms,
							 PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
		}
	}

	/* Exit code 1: a terminated worker is started again by the postmaster. */
	proc_exit(1);
}
