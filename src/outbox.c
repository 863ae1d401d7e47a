/*-------------------------------------------------------------------------
 *
 * outbox.c
 *	  All SQL against bento's tables: enqueue, claim, record, recover.
 *
 * The worker's functions here run inside a transaction the worker opened
 * (see worker.c) and never across a network call: a batch is claimed and
 * committed, sent with no transaction open, and its outcome recorded in a
 * new transaction.  Every statement handles a whole batch at once.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "bento.h"

static SPIPlanPtr enqueue_plan = NULL;
static SPIPlanPtr enqueue_keyed_plan = NULL;
static SPIPlanPtr lookup_plan = NULL;

/*
 * Prepare and keep a plan (cursor_options as for SPI_prepare_cursor).
 * Saved plans are re-planned by the plan cache when the tables change, and
 * re-analyzed if the extension is re-created.
 */
SPIPlanPtr
bento_keep_plan(const char *sql, int nargs, Oid *argtypes, int cursor_options)
{
	SPIPlanPtr	plan = SPI_prepare_cursor(sql, nargs, argtypes, cursor_options);

	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "SPI_keepplan failed");
	return plan;
}

/*
 * Prepare the enqueue statements once per backend.
 */
static void
prepare_enqueue_plans(void)
{
	Oid			argtypes[6] = {TEXTOID, TEXTOID, JSONBOID, JSONBOID,
	TEXTOID, TIMESTAMPTZOID};

	if (enqueue_plan == NULL)
		enqueue_plan = bento_keep_plan(
								 "INSERT INTO bento.outbox"
								 " (type, email, fields, details, external_id, occurred_at)"
								 " VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
								 6, argtypes, 0);

	/*
	 * With an external_id, the row in bento.dedupe decides: ON CONFLICT waits
	 * for a concurrent transaction inserting the same key, and inserts
	 * nothing if that one commits.
	 */
	if (enqueue_keyed_plan == NULL)
		enqueue_keyed_plan = bento_keep_plan(
									   "WITH k AS ("
									   "  INSERT INTO bento.dedupe (external_id, outbox_id)"
									   "  VALUES ($5, pg_catalog.nextval('bento.outbox_id_seq'))"
									   "  ON CONFLICT (external_id) DO NOTHING"
									   "  RETURNING outbox_id)"
									   " INSERT INTO bento.outbox"
									   " (id, type, email, fields, details, external_id, occurred_at)"
									   " OVERRIDING SYSTEM VALUE"
									   " SELECT k.outbox_id, $1, $2, $3, $4, $5, $6 FROM k"
									   " RETURNING id",
									   6, argtypes, 0);
	if (lookup_plan == NULL)
		lookup_plan = bento_keep_plan(
								"SELECT outbox_id FROM bento.dedupe"
								" WHERE external_id OPERATOR(pg_catalog.=) $1",
								1, &argtypes[4], 0);
}

/*
 * Insert one validated event into bento.outbox in the caller's transaction
 * and return its id.  values/nulls hold type, email, fields, details,
 * external_id and occurred_at.  When external_id was queued before, nothing
 * is inserted and the first event's id is returned.
 */
int64
bento_enqueue(Datum *values, bool *nulls)
{
	char		nullflags[6];
	int64		id = 0;
	bool		found = false;
	bool		isnull;
	int			ret;

	for (int i = 0; i < 6; i++)
		nullflags[i] = nulls[i] ? 'n' : ' ';

	if ((ret = SPI_connect()) != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed: %s", SPI_result_code_string(ret));
	prepare_enqueue_plans();

	if (nulls[4])
	{
		ret = SPI_execute_plan(enqueue_plan, values, nullflags, false, 1);
		if (ret != SPI_OK_INSERT_RETURNING || SPI_processed != 1)
			elog(ERROR, "could not insert into bento.outbox: %s",
				 SPI_result_code_string(ret));
		id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
										 SPI_tuptable->tupdesc, 1, &isnull));
		found = true;
	}

	/*
	 * Two rounds at most: the lookup misses only if the key was deleted
	 * between the two statements, and then the insert succeeds.
	 */
	for (int attempt = 0; attempt < 2 && !found; attempt++)
	{
		ret = SPI_execute_plan(enqueue_keyed_plan, values, nullflags, false, 1);
		if (ret != SPI_OK_INSERT_RETURNING)
			elog(ERROR, "could not insert into bento.outbox: %s",
				 SPI_result_code_string(ret));
		if (SPI_processed == 1)
		{
			id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
											 SPI_tuptable->tupdesc, 1, &isnull));
			found = true;
			break;
		}

		ret = SPI_execute_plan(lookup_plan, &values[4], &nullflags[4], false, 1);
		if (ret != SPI_OK_SELECT)
			elog(ERROR, "could not look up bento.dedupe: %s",
				 SPI_result_code_string(ret));
		if (SPI_processed == 1)
		{
			id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
											 SPI_tuptable->tupdesc, 1, &isnull));
			found = true;
		}
	}

	SPI_finish();

	if (!found)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("could not queue the event with external_id \"%s\"",
						TextDatumGetCString(values[4])),
				 errdetail("The external_id was removed by a concurrent transaction."),
				 errhint("Retry the transaction.")));
	return id;
}

/*
 * Return rows left 'sending' by a worker that stopped mid-request to
 * 'pending', and mark the requests they were part of as of unknown outcome.
 * Called once when the worker starts (or first finds the extension): no
 * other process claims rows, so every 'sending' row is orphaned.
 */
void
bento_recover_in_flight(void)
{
	int			ret;
	uint64		nrows;
	uint64		ndeliveries;

	ret = SPI_execute("UPDATE bento.outbox SET status = 'pending', next_attempt_at = now(),"
					  " in_doubt = true,"
					  " last_error = 'requeued: the worker stopped before the outcome of delivery '"
					  " || delivery_id || ' was recorded'"
					  " WHERE status = 'sending'",
					  false, 0);
	if (ret != SPI_OK_UPDATE)
		elog(ERROR, "could not requeue claimed events: %s", SPI_result_code_string(ret));
	nrows = SPI_processed;

	ret = SPI_execute("UPDATE bento.deliveries SET outcome = 'unknown',"
					  " finished_at = clock_timestamp(),"
					  " transport_error = coalesce(transport_error,"
					  "   'the worker stopped before the outcome was recorded')"
					  " WHERE outcome = 'in_flight'",
					  false, 0);
	if (ret != SPI_OK_UPDATE)
		elog(ERROR, "could not close unfinished deliveries: %s", SPI_result_code_string(ret));
	ndeliveries = SPI_processed;

	if (nrows > 0 || ndeliveries > 0)
		ereport(LOG,
				(errmsg("bento requeued " UINT64_FORMAT " events from " UINT64_FORMAT " requests whose outcome is unknown",
						nrows, ndeliveries),
				 errdetail("The worker stopped while those requests were in flight; the events will be sent again.")));
}

/*
 * Claim up to limit due pending events with ids up to max_id, oldest first,
 * for one request: mark them 'sending', count the attempt, and create the
 * bento.deliveries row they will be recorded against.  The events are
 * copied into cxt.  batch->nevents is 0 when nothing is due.
 */
void
bento_claim_batch(int limit, int64 max_id, BentoBatch *batch, MemoryContext cxt)
{
	Oid			argtypes[2] = {INT4OID, INT8OID};
	Datum		values[2] = {Int32GetDatum(limit), Int64GetDatum(max_id)};
	int			ret;
	MemoryContext oldcxt;

	batch->delivery_id = 0;
	batch->nevents = 0;
	batch->events = NULL;

	ret = SPI_execute_with_args(
								"WITH c AS MATERIALIZED ("
								"  SELECT o.id FROM bento.outbox o"
								"  WHERE o.status = 'pending' AND o.next_attempt_at <= now()"
								"  AND o.id <= $2"
								"  ORDER BY o.id LIMIT $1"
								"  FOR UPDATE SKIP LOCKED),"
								" d AS (INSERT INTO bento.deliveries (event_count)"
								"  SELECT count(*) FROM c HAVING count(*) > 0"
								"  RETURNING id),"
								" u AS (UPDATE bento.outbox o"
								"  SET status = 'sending', attempts = o.attempts + 1, delivery_id = d.id"
								"  FROM c, d WHERE o.id = c.id"
								"  RETURNING o.id, o.type, o.email, o.fields, o.details, o.occurred_at,"
								"   d.id AS delivery_id)"
								" SELECT u.id, u.type, u.email, u.fields::text, u.details::text,"
								"  to_char(u.occurred_at AT TIME ZONE 'UTC',"
								"          'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),"
								"  u.delivery_id"
								" FROM u ORDER BY u.id",
								2, argtypes, values, NULL, false, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not claim events: %s", SPI_result_code_string(ret));
	if (SPI_processed == 0)
		return;

	oldcxt = MemoryContextSwitchTo(cxt);
	batch->nevents = (int) SPI_processed;
	batch->events = palloc(sizeof(BentoBatchEvent) * batch->nevents);
	for (int i = 0; i < batch->nevents; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		BentoBatchEvent *ev = &batch->events[i];
		bool		isnull;

		ev->id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		ev->type = SPI_getvalue(tup, desc, 2);
		ev->email = SPI_getvalue(tup, desc, 3);
		ev->fields = SPI_getvalue(tup, desc, 4);
		ev->details = SPI_getvalue(tup, desc, 5);
		ev->date = SPI_getvalue(tup, desc, 6);
		if (i == 0)
			batch->delivery_id = DatumGetInt64(SPI_getbinval(tup, desc, 7, &isnull));
	}
	MemoryContextSwitchTo(oldcxt);
}

static const char *
outcome_name(BentoOutcome outcome)
{
	switch (outcome)
	{
		case BENTO_OUTCOME_DELIVERED:
			return "delivered";
		case BENTO_OUTCOME_PARTIAL:
			return "partial";
		case BENTO_OUTCOME_REJECTED:
			return "rejected";
		case BENTO_OUTCOME_SPLIT:
			return "split";
		case BENTO_OUTCOME_RETRY:
			return "retry";
		case BENTO_OUTCOME_UNKNOWN:
			return "unknown";
	}
	return "unknown";			/* keep compiler quiet */
}

/*
 * Fill in the bento.deliveries row of a finished request.
 */
static void
record_delivery(BentoBatch *batch, BentoHttpResult *http,
				BentoResponse *response, BentoDecision *decision)
{
	Oid			argtypes[10] = {INT8OID, TEXTOID, INT4OID, TEXTOID, FLOAT8OID,
	INT4OID, INT4OID, INT4OID, TEXTOID, INT4OID};
	Datum		values[10];
	char		nulls[10];
	int			ret;

	memset(nulls, ' ', sizeof(nulls));
	values[0] = Int64GetDatum(batch->delivery_id);
	values[1] = CStringGetTextDatum(outcome_name(decision->outcome));
	values[2] = Int32GetDatum((int32) http->http_status);
	if (http->http_status == 0)
		nulls[2] = 'n';
	if (http->curl_code != 0)
		values[3] = CStringGetTextDatum(http->error);
	else
		nulls[3] = 'n';
	values[4] = Float8GetDatum(http->duration_ms);
	values[5] = Int32GetDatum(response->results);
	if (response->results < 0)
		nulls[5] = 'n';
	values[6] = Int32GetDatum(response->failed);
	if (response->failed < 0)
		nulls[6] = 'n';
	values[7] = Int32GetDatum(http->retry_after_ms);
	if (http->retry_after_ms < 0)
		nulls[7] = 'n';
	if (http->body_len > 0)
		values[8] = CStringGetTextDatum(bento_sanitize_excerpt(http->body,
															   http->body_len,
															   BENTO_MAX_RESPONSE_BYTES,
															   false));
	else
		nulls[8] = 'n';
	values[9] = Int32GetDatum(batch->nevents);

	ret = SPI_execute_with_args("UPDATE bento.deliveries SET"
								" finished_at = clock_timestamp(), outcome = $2,"
								" http_status = $3, transport_error = $4, duration_ms = $5,"
								" results = $6, failed = $7,"
								" retry_after = $8 * interval '1 millisecond',"
								" response_body = $9, event_count = $10"
								" WHERE id = $1",
								10, argtypes, values, nulls, false, 0);
	if (ret != SPI_OK_UPDATE)
		elog(ERROR, "could not record delivery: %s", SPI_result_code_string(ret));
}

/*
 * Record the outcome of a request: the bento.deliveries row, and every
 * event of the batch, in one statement for the events.
 *
 * Delivered, partial and rejected batches are final: each event becomes
 * 'sent', or 'dead' with the error Bento gave for its index (or the
 * decision's row_error when the whole batch was refused).  Retry and unknown
 * batches go back to 'pending' with a backoff that grows with the event's
 * attempts, and never shorter than the decision's retry_after_ms.
 */
void
bento_record_result(BentoBatch *batch, BentoHttpResult *http,
					BentoResponse *response, BentoDecision *decision)
{
	Datum	   *ids;
	int			ret;

	record_delivery(batch, http, response, decision);

	ids = palloc(sizeof(Datum) * batch->nevents);
	for (int i = 0; i < batch->nevents; i++)
		ids[i] = Int64GetDatum(batch->events[i].id);

	if (decision->outcome == BENTO_OUTCOME_RETRY ||
		decision->outcome == BENTO_OUTCOME_UNKNOWN ||
		decision->outcome == BENTO_OUTCOME_SPLIT)
	{
		Oid			argtypes[12] = {INT8ARRAYOID, INT8OID, TEXTOID, TEXTOID, TEXTOID,
			BOOLOID, BOOLOID, FLOAT8OID, BOOLOID, INT4OID, FLOAT8OID, FLOAT8OID};
		Datum		values[12];

		values[0] = PointerGetDatum(construct_array(ids, batch->nevents, INT8OID,
													sizeof(int64), FLOAT8PASSBYVAL,
													TYPALIGN_DOUBLE));
		values[1] = Int64GetDatum(batch->delivery_id);
		values[2] = CStringGetTextDatum(decision->row_error);
		values[3] = CStringGetTextDatum(decision->label);
		values[4] = CStringGetTextDatum(decision->excerpt);
		values[5] = BoolGetDatum(decision->counts_attempt);
		values[6] = BoolGetDatum(decision->outcome == BENTO_OUTCOME_UNKNOWN);
		values[7] = Float8GetDatum((double) Max(decision->retry_after_ms, 0));
		values[8] = BoolGetDatum(decision->backoff);
		values[9] = Int32GetDatum(bento_max_attempts);
		values[10] = Float8GetDatum((double) bento_max_retry_age);
		values[11] = Float8GetDatum(decision->jitter);

		/*
		 * Back to pending, or dead once a counted attempt reaches the give-up
		 * point (bento.max_attempts, bento.max_retry_age, 0 = none).  An
		 * attempt that does not count (429, a split) is taken back.
		 */
		ret = SPI_execute_with_args("UPDATE bento.outbox o SET"
									" status = CASE WHEN g.give_up THEN 'dead' ELSE 'pending' END::bento.event_status,"
									" attempts = o.attempts - CASE WHEN $6 THEN 0 ELSE 1 END,"
									" in_doubt = o.in_doubt OR $7,"
									" next_attempt_at = clock_timestamp() + greatest("
									"   $8 * interval '1 millisecond',"
									"   CASE WHEN $9 THEN bento.retry_delay(o.attempts, $12) ELSE interval '0' END),"
									" last_error = CASE WHEN g.give_up"
									"   THEN format('%s after %s attempts over %s: %s', $4, o.attempts,"
									"               bento.describe_duration(g.age), $5)"
									"   ELSE $3 END"
									" FROM (SELECT x.id,"
									"         clock_timestamp() - coalesce(x.requeued_at, x.enqueued_at) AS age,"
									"         $6 AND (($10 > 0 AND x.attempts >= $10) OR"
									"                 ($11 > 0 AND clock_timestamp() - coalesce(x.requeued_at, x.enqueued_at)"
									"                              >= $11 * interval '1 second')) AS give_up"
									"       FROM bento.outbox x WHERE x.id = ANY ($1)) g"
									" WHERE o.id = g.id AND o.id = ANY ($1) AND o.status = 'sending'"
									" AND o.delivery_id = $2",
									12, argtypes, values, NULL, false, 0);
	}
	else
	{
		/*
		 * Final outcome.  Rows that Bento named in errors[] (or every row of a
		 * rejected batch) become dead with their own error; the rest are
		 * sent.  Two statements keyed on "id = ANY", so that the planner
		 * looks the rows up by primary key whatever its statistics say.
		 */
		Datum	   *dead_ids = palloc(sizeof(Datum) * batch->nevents);
		Datum	   *dead_errs = palloc(sizeof(Datum) * batch->nevents);
		Datum	   *sent_ids = palloc(sizeof(Datum) * batch->nevents);
		char	  **errs = palloc0(sizeof(char *) * batch->nevents);
		int			ndead = 0;
		int			nsent = 0;

		for (int i = 0; i < batch->nevents; i++)
			if (decision->outcome == BENTO_OUTCOME_REJECTED)
				errs[i] = decision->row_error;
		for (int i = 0; i < response->nerrors; i++)
		{
			int			index = response->error_index[i];

			if (index < 0 || index >= batch->nevents)
			{
				ereport(WARNING,
						(errmsg("Bento reported an error for event index %d of a batch of %d events",
								index, batch->nevents),
						 errdetail("The index is out of range and was ignored. Error: %s",
								   response->error_text[i])));
				continue;
			}
			errs[index] = response->error_text[i];
		}
		for (int i = 0; i < batch->nevents; i++)
		{
			if (errs[i] != NULL)
			{
				dead_ids[ndead] = ids[i];
				dead_errs[ndead++] = CStringGetTextDatum(errs[i]);
			}
			else
				sent_ids[nsent++] = ids[i];
		}

		ret = SPI_OK_UPDATE;
		if (nsent > 0)
		{
			Oid			argtypes[2] = {INT8ARRAYOID, INT8OID};
			Datum		values[2];

			values[0] = PointerGetDatum(construct_array(sent_ids, nsent, INT8OID,
														sizeof(int64), FLOAT8PASSBYVAL,
														TYPALIGN_DOUBLE));
			values[1] = Int64GetDatum(batch->delivery_id);
			ret = SPI_execute_with_args("UPDATE bento.outbox o SET status = 'sent', sent_at = now()"
										" WHERE o.id = ANY ($1) AND o.status = 'sending'"
										" AND o.delivery_id = $2",
										2, argtypes, values, NULL, false, 0);
		}
		if (ndead > 0 && ret == SPI_OK_UPDATE)
		{
			Oid			argtypes[3] = {INT8ARRAYOID, TEXTARRAYOID, INT8OID};
			Datum		values[3];

			values[0] = PointerGetDatum(construct_array(dead_ids, ndead, INT8OID,
														sizeof(int64), FLOAT8PASSBYVAL,
														TYPALIGN_DOUBLE));
			values[1] = PointerGetDatum(construct_array(dead_errs, ndead, TEXTOID,
														-1, false, TYPALIGN_INT));
			values[2] = Int64GetDatum(batch->delivery_id);
			ret = SPI_execute_with_args("UPDATE bento.outbox o SET status = 'dead', last_error = e.err"
										" FROM unnest($1, $2) AS e(id, err)"
										" WHERE o.id = e.id AND o.id = ANY ($1)"
										" AND o.status = 'sending' AND o.delivery_id = $3",
										3, argtypes, values, NULL, false, 0);
		}
	}
	if (ret != SPI_OK_UPDATE)
		elog(ERROR, "could not record the outcome of delivery " INT64_FORMAT ": %s",
			 batch->delivery_id, SPI_result_code_string(ret));
}

/*
 * Retention: delete one batch of at most limit rows that are past their
 * keeping time, oldest first, and return how many were deleted.  Called by
 * the worker in short transactions of their own, so that no lock is held
 * for long and autovacuum keeps up.
 *
 * BENTO_PURGE_SENT: sent events older than bento.retention.
 * BENTO_PURGE_DELIVERIES: finished delivery records older than that.
 * BENTO_PURGE_DEDUPE: external_ids queued longer ago than
 * bento.dedupe_window, unless their event still waits to be sent.
 */
uint64
bento_purge_batch(int which, int limit)
{
	static const char *const sql[] = {
		"DELETE FROM bento.outbox WHERE id IN ("
		" SELECT id FROM bento.outbox"
		" WHERE status = 'sent' AND sent_at < now() - $1 * interval '1 second'"
		" ORDER BY sent_at LIMIT $2 FOR UPDATE SKIP LOCKED)",

		"DELETE FROM bento.deliveries WHERE id IN ("
		" SELECT id FROM bento.deliveries"
		" WHERE finished_at < now() - $1 * interval '1 second'"
		" ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)",

		"DELETE FROM bento.dedupe WHERE external_id IN ("
		" SELECT d.external_id FROM bento.dedupe d"
		" WHERE d.created_at < now() - $1 * interval '1 second'"
		" AND NOT EXISTS (SELECT 1 FROM bento.outbox o WHERE o.id = d.outbox_id"
		"                 AND o.status IN ('pending', 'sending'))"
		" ORDER BY d.created_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
	};
	Oid			argtypes[2] = {FLOAT8OID, INT4OID};
	Datum		values[2];
	int			keep;
	int			ret;

	Assert(which >= 0 && which < lengthof(sql));
	keep = (which == BENTO_PURGE_DEDUPE) ? bento_dedupe_window : bento_retention;
	if (keep <= 0)
		return 0;

	values[0] = Float8GetDatum((double) keep);
	values[1] = Int32GetDatum(limit);
	ret = SPI_execute_with_args(sql[which], 2, argtypes, values, NULL, false, 0);
	if (ret != SPI_OK_DELETE)
		elog(ERROR, "could not delete expired rows: %s", SPI_result_code_string(ret));
	return SPI_processed;
}
