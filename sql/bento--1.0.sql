/* bento--1.0.sql */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION bento" to load this file. \quit

/*
 * Internal objects live in schema "bento".  Only bento_track() lives in the
 * extension's schema (normally "public"), so that "SELECT bento_track(...)"
 * works with the default search_path.
 */
CREATE SCHEMA bento;
REVOKE ALL ON SCHEMA bento FROM PUBLIC;
COMMENT ON SCHEMA bento IS 'Outbox, delivery log and status of the bento extension';

/*
 * One row per HTTP request the worker made (or was about to make).
 */
CREATE TABLE bento.deliveries (
	id				bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	started_at		timestamptz NOT NULL DEFAULT clock_timestamp(),
	finished_at		timestamptz,
	event_count		integer NOT NULL,
	outcome			text NOT NULL DEFAULT 'in_flight'
		CHECK (outcome IN ('in_flight', 'delivered', 'partial', 'rejected',
						   'split', 'retry', 'unknown')),
	http_status		integer,
	transport_error text,
	duration_ms		double precision,
	results			integer,
	failed			integer,
	retry_after		interval,
	response_body	text
);

COMMENT ON TABLE bento.deliveries IS 'One row per request the bento worker sent to Bento';
COMMENT ON COLUMN bento.deliveries.outcome IS
	'in_flight: claimed, not yet recorded; delivered: every event accepted; partial: some events rejected; '
	'rejected: the whole batch was refused for good; split: Bento refused the batch (400), its events are sent again in smaller batches; '
	'retry: the batch will be sent again; '
	'unknown: the outcome could not be known (worker or server stopped mid-request), the events were requeued';
COMMENT ON COLUMN bento.deliveries.transport_error IS 'libcurl error text when no complete HTTP response arrived';
COMMENT ON COLUMN bento.deliveries.response_body IS 'Response body, cut to 8 kB';

/*
 * An event's state.  An enum rather than a CHECK constraint: bento_track()
 * would otherwise evaluate the constraint on every call.
 */
CREATE TYPE bento.event_status AS ENUM ('pending', 'sending', 'sent', 'dead');

/*
 * The outbox: one row per tracked event.
 */
CREATE TABLE bento.outbox (
	id				bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	type			text NOT NULL,
	email			text NOT NULL,
	fields			jsonb,
	details			jsonb,
	external_id		text,
	occurred_at		timestamptz NOT NULL,
	enqueued_at		timestamptz NOT NULL DEFAULT now(),
	status			bento.event_status NOT NULL DEFAULT 'pending',
	attempts		integer NOT NULL DEFAULT 0,
	next_attempt_at timestamptz NOT NULL DEFAULT now(),
	last_error		text,
	sent_at			timestamptz,
	delivery_id		bigint,
	in_doubt		boolean NOT NULL DEFAULT false,
	requeued_at		timestamptz
);

COMMENT ON TABLE bento.outbox IS 'Events queued by bento_track(), delivered by the bento worker';
COMMENT ON COLUMN bento.outbox.status IS
	'pending: waiting to be sent (or re-sent after next_attempt_at); sending: claimed by the worker for a request in flight; '
	'sent: Bento accepted it; dead: it can never be delivered, see last_error';
COMMENT ON COLUMN bento.outbox.attempts IS
	'Delivery attempts counted toward bento.max_attempts: requests that carried the event, '
	'except those answered 429 and rejected batches that were split';
COMMENT ON COLUMN bento.outbox.in_doubt IS
	'The event was in a request whose outcome could not be known, then sent again: Bento may have received it twice';
COMMENT ON COLUMN bento.outbox.requeued_at IS
	'When bento.requeue_dead() last requeued this dead event; the retry cycle counts from here';
COMMENT ON COLUMN bento.outbox.delivery_id IS 'bento.deliveries.id of the last request that carried this event';

/*
 * Deduplication: the external_ids queued, one row each, kept apart from the
 * outbox so that they outlive the events (retention may delete a sent event
 * while its external_id must still be refused).
 */
CREATE TABLE bento.dedupe (
	external_id		text PRIMARY KEY,
	outbox_id		bigint NOT NULL,
	created_at		timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dedupe_created_at_idx ON bento.dedupe (created_at);

COMMENT ON TABLE bento.dedupe IS 'external_ids already queued; bento_track() queues an external_id once';
COMMENT ON COLUMN bento.dedupe.outbox_id IS 'bento.outbox.id of the event queued with this external_id';
-- The worker's claim (pending rows in id order) and its recovery after a
-- crash (rows left 'sending').
CREATE INDEX outbox_unfinished_idx ON bento.outbox (id)
	WHERE status IN ('pending', 'sending');
-- Retention: sent events by age.
CREATE INDEX outbox_sent_at_idx ON bento.outbox (sent_at) WHERE status = 'sent';
-- Requests whose outcome was never recorded.
CREATE INDEX deliveries_in_flight_idx ON bento.deliveries (id)
	WHERE outcome = 'in_flight';

-- Keep queued events and the delivery log in pg_dump output.
SELECT pg_catalog.pg_extension_config_dump('bento.outbox', '');
SELECT pg_catalog.pg_extension_config_dump('bento.outbox_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('bento.deliveries', '');
SELECT pg_catalog.pg_extension_config_dump('bento.deliveries_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('bento.dedupe', '');

/*
 * bento_track: validate an event and queue it in the caller's transaction.
 */
CREATE FUNCTION bento_track(type text,
							email text,
							fields jsonb DEFAULT NULL,
							details jsonb DEFAULT NULL,
							external_id text DEFAULT NULL,
							occurred_at timestamptz DEFAULT now())
RETURNS bigint
AS 'MODULE_PATHNAME', 'bento_track'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION bento_track(text, text, jsonb, jsonb, text, timestamptz) IS
	'Queue an event for Bento in the current transaction; returns the outbox row id '
	'(the existing row''s id when external_id was already queued)';

/*
 * bento.check_event: bento_track's checks, for set-based producers.
 */
CREATE FUNCTION bento.check_event(type text,
								  email text,
								  fields jsonb,
								  details jsonb,
								  external_id text,
								  occurred_at timestamptz,
								  raise boolean DEFAULT false,
								  caller text DEFAULT 'bento_track')
RETURNS text
AS 'MODULE_PATHNAME', 'bento_check_event'
LANGUAGE C STABLE CALLED ON NULL INPUT PARALLEL SAFE;

COMMENT ON FUNCTION bento.check_event(text, text, jsonb, jsonb, text, timestamptz, boolean, text) IS
	'NULL when bento_track would accept the event; else its error (raised when raise is true)';

/*
 * bento.wake_at_commit: wake the worker when this transaction commits.
 */
CREATE FUNCTION bento.wake_at_commit()
RETURNS void
AS 'MODULE_PATHNAME', 'bento_wake_at_commit'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION bento.wake_at_commit() IS
	'Wake the bento worker when the current transaction commits (bento_track does this itself)';

/*
 * bento.status: the state of the outbox and worker at a glance.
 */
CREATE VIEW bento.status AS
SELECT
	c.pending,
	c.sending,
	c.sent,
	c.dead,
	c.in_doubt,
	(SELECT count(*) FROM bento.deliveries u WHERE u.outcome = 'unknown') AS unknown_deliveries,
	c.oldest_pending_age,
	d.finished_at AS last_delivery_at,
	d.outcome AS last_delivery_outcome,
	d.http_status AS last_http_status,
	d.transport_error AS last_transport_error,
	EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a
			WHERE a.backend_type = 'bento'
			  AND a.datname = pg_catalog.current_database()) AS worker_running
FROM (SELECT
		count(*) FILTER (WHERE o.status = 'pending') AS pending,
		count(*) FILTER (WHERE o.status = 'sending') AS sending,
		count(*) FILTER (WHERE o.status = 'sent') AS sent,
		count(*) FILTER (WHERE o.status = 'dead') AS dead,
		count(*) FILTER (WHERE o.in_doubt) AS in_doubt,
		now() - min(o.enqueued_at) FILTER (WHERE o.status IN ('pending', 'sending')) AS oldest_pending_age
	  FROM bento.outbox o) c
	LEFT JOIN LATERAL (SELECT dd.finished_at, dd.outcome, dd.http_status, dd.transport_error
					   FROM bento.deliveries dd
					   WHERE dd.finished_at IS NOT NULL
					   ORDER BY dd.id DESC LIMIT 1) d ON true;

COMMENT ON VIEW bento.status IS
	'Rows per status, events and requests in doubt, age of the oldest undelivered event, '
	'the last recorded delivery and whether the worker serves this database';

/*
 * Retry schedule and dead letters.
 */
CREATE FUNCTION bento.retry_delay(attempts integer, jitter double precision DEFAULT NULL)
RETURNS interval
AS 'MODULE_PATHNAME', 'bento_retry_delay'
LANGUAGE C VOLATILE PARALLEL SAFE;

COMMENT ON FUNCTION bento.retry_delay(integer, double precision) IS
	'Delay before the next attempt after the given number of failed attempts: '
	'bento.retry_base_delay * 2^(attempts-1), capped at bento.retry_max_delay, shortened by up to 25 % jitter '
	'(jitter 0 = none, 1 = the most; NULL = random)';

CREATE FUNCTION bento.describe_duration(d interval)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE
		WHEN s < 120 THEN round(s) || ' seconds'
		WHEN s < 7200 THEN round(s / 60) || ' minutes'
		WHEN s < 172800 THEN round(s / 3600) || ' hours'
		ELSE round(s / 86400) || ' days'
	END
	FROM (SELECT extract(epoch FROM d) AS s) x
$$;

COMMENT ON FUNCTION bento.describe_duration(interval) IS
	'A duration in words for messages: "40 seconds", "12 minutes", "5 hours", "3 days"';

CREATE VIEW bento.dead_letters AS
SELECT o.id, o.type, o.email, o.external_id, o.attempts, o.enqueued_at, o.occurred_at,
	   o.last_error, o.delivery_id, d.http_status, d.finished_at AS dead_since, o.fields, o.details
FROM bento.outbox o
	LEFT JOIN bento.deliveries d ON d.id = o.delivery_id
WHERE o.status = 'dead';

COMMENT ON VIEW bento.dead_letters IS 'Events that will not be delivered, with the reason; see bento.requeue_dead()';

/*
 * Requeue dead events for another full retry cycle: by id, by filter, or
 * (no argument) all of them.  Filters combine with AND.
 */
CREATE FUNCTION bento.requeue_dead(ids bigint[] DEFAULT NULL,
								   type text DEFAULT NULL,
								   last_error_like text DEFAULT NULL,
								   enqueued_after timestamptz DEFAULT NULL,
								   enqueued_before timestamptz DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n bigint;
BEGIN
	UPDATE bento.outbox o
	SET status = 'pending', attempts = 0, next_attempt_at = now(),
		requeued_at = now(), in_doubt = false,
		last_error = 'requeued by ' || current_user || ' after: ' || coalesce(o.last_error, '')
	WHERE o.status = 'dead'
	  AND (requeue_dead.ids IS NULL OR o.id = ANY (requeue_dead.ids))
	  AND (requeue_dead.type IS NULL OR o.type = requeue_dead.type)
	  AND (requeue_dead.last_error_like IS NULL OR o.last_error LIKE requeue_dead.last_error_like)
	  AND (requeue_dead.enqueued_after IS NULL OR o.enqueued_at >= requeue_dead.enqueued_after)
	  AND (requeue_dead.enqueued_before IS NULL OR o.enqueued_at < requeue_dead.enqueued_before);
	GET DIAGNOSTICS n = ROW_COUNT;
	IF n > 0 THEN
		PERFORM bento.wake_at_commit();
	END IF;
	RETURN n;
END
$$;

COMMENT ON FUNCTION bento.requeue_dead(bigint[], text, text, timestamptz, timestamptz) IS
	'Requeue dead events (by id, by filter, or all) for another full retry cycle; returns how many';

-- Monitoring roles may read the summary (not the events themselves).
GRANT USAGE ON SCHEMA bento TO pg_monitor;
GRANT SELECT ON bento.status TO pg_monitor;

-- Watches: table triggers that queue events
--
-- A watch is one statement-level AFTER trigger per operation (INSERT, UPDATE,
-- DELETE) on a user's table, calling bento.watch_trigger() with the watch's
-- configuration as its arguments: the event type, the email (a column or an
-- SQL expression over the row) and, optionally, the other options as a JSON
-- object.  Nothing else stores a watch: pg_dump dumps the trigger with its
-- arguments, dropping the table drops it, DROP EXTENSION ... CASCADE drops
-- it (the trigger depends on bento.watch_trigger()), and bento.watched reads
-- pg_trigger.  The trigger reads the statement's transition tables and
-- queues every event in two statements, whatever the number of rows (see
-- src/trigger.c).
--
-- Everything below is superuser-only except the pure helpers the view needs:
-- a watch's expressions run (as the table's owner) on every write to the
-- table, and its events are queued as the extension's owner.

/*
 * Invalid events skipped by watches: one row per statement that skipped
 * some.  Append-only, so that concurrent writers never wait for each other;
 * bento.watched sums it.  Not dumped: trigger OIDs change on restore.
 */
CREATE TABLE bento.watch_skips (
	trigger_oid		oid NOT NULL,
	skipped_at		timestamptz NOT NULL DEFAULT now(),
	skipped			bigint NOT NULL,
	events			bigint NOT NULL,
	first_error		text NOT NULL
);
CREATE INDEX watch_skips_trigger_idx ON bento.watch_skips (trigger_oid, skipped_at);

COMMENT ON TABLE bento.watch_skips IS
	'One row per statement in which a watch skipped events that bento_track would refuse';
COMMENT ON COLUMN bento.watch_skips.trigger_oid IS 'pg_trigger.oid of the watch''s trigger';
COMMENT ON COLUMN bento.watch_skips.skipped IS 'Events skipped by the statement';
COMMENT ON COLUMN bento.watch_skips.events IS 'Events the statement produced, skipped ones included';
COMMENT ON COLUMN bento.watch_skips.first_error IS 'Why the first skipped event was refused';

/*
 * The trigger function.  SECURITY DEFINER so that a role that may only write
 * to the watched table still queues events; the watch's expressions are
 * evaluated as the table's owner, never as the extension's owner.  No JIT:
 * the row estimates of transition tables are rough, and compiling costs more
 * than it saves on statements this simple.
 */
CREATE FUNCTION bento.watch_trigger()
RETURNS trigger
AS 'MODULE_PATHNAME', 'bento_watch_trigger'
LANGUAGE C VOLATILE PARALLEL UNSAFE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off;

REVOKE ALL ON FUNCTION bento.watch_trigger() FROM PUBLIC;

COMMENT ON FUNCTION bento.watch_trigger() IS
	'Statement-level AFTER trigger that queues a Bento event per inserted, updated or deleted row; '
	'arguments: event type, email (column or SQL expression), options (JSON object)';

/*
 * Check a trigger that calls bento.watch_trigger() by running it on empty
 * transition tables: every expression is parsed, planned and executed, with
 * the privileges it will have when rows arrive.
 */
CREATE FUNCTION bento.check_watch(trigger_oid oid)
RETURNS void
AS 'MODULE_PATHNAME', 'bento_check_watch'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp SET jit = off;

REVOKE ALL ON FUNCTION bento.check_watch(oid) FROM PUBLIC;

COMMENT ON FUNCTION bento.check_watch(oid) IS
	'Raise the error a watch trigger would raise on its first rows, if any (for hand-written triggers)';

/*
 * pg_trigger.tgargs split into its arguments.
 */
CREATE FUNCTION bento.trigger_arguments(args bytea, nargs smallint)
RETURNS text[]
AS 'MODULE_PATHNAME', 'bento_trigger_arguments'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION bento.trigger_arguments(bytea, smallint) IS
	'The arguments of a trigger, from pg_trigger.tgargs and tgnargs';

/*
 * Refuse anything but one SQL expression: the text must parse, alone, as
 * the single target of a SELECT, and must not close a parenthesis it did not
 * open.  So a watch's expression can never reach out of its place in the
 * query the trigger builds.
 */
CREATE FUNCTION bento.check_expression(expression text, what text)
RETURNS void
AS 'MODULE_PATHNAME', 'bento_check_expression'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION bento.check_expression(text, text) IS
	'Raise an error naming "what" unless the text is exactly one SQL expression';

/*
 * The key that pairs an UPDATE's old and new rows and names a row in the
 * default external_id: the primary key, else the replica identity index.
 * operators holds each column's btree equality operator, schema-qualified.
 */
CREATE FUNCTION bento.watch_key(relid oid, OUT columns name[], OUT operators text[])
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT array_agg(a.attname ORDER BY k.ord),
		   array_agg(format('OPERATOR(%I.%s)', opn.nspname, op.oprname) ORDER BY k.ord)
	FROM (SELECT i.indrelid, i.indkey, i.indclass, i.indnkeyatts
		  FROM pg_index i
		  WHERE i.indrelid = watch_key.relid AND (i.indisprimary OR i.indisreplident)
		  ORDER BY i.indisprimary DESC
		  LIMIT 1) i
		CROSS JOIN LATERAL unnest(i.indkey::int2[], i.indclass::oid[]) WITH ORDINALITY AS k(attnum, opclass, ord)
		JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
		JOIN pg_opclass opc ON opc.oid = k.opclass
		JOIN pg_amop amop ON amop.amopfamily = opc.opcfamily
			AND amop.amoplefttype = opc.opcintype AND amop.amoprighttype = opc.opcintype
			AND amop.amopstrategy = 3
		JOIN pg_operator op ON op.oid = amop.amopopr
		JOIN pg_namespace opn ON opn.oid = op.oprnamespace
	WHERE k.ord <= i.indnkeyatts
$$;

COMMENT ON FUNCTION bento.watch_key(oid) IS
	'Primary key (else replica identity index) columns of a table and their equality operators';

/*
 * A column reference when the text is exactly the name of one of cols,
 * else the text as a checked, parenthesized SQL expression.
 */
CREATE FUNCTION bento.watch_value(value text, cols name[], alias text, what text)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF watch_value.value = ANY (watch_value.cols) THEN
		RETURN format('%I.%I', watch_value.alias, watch_value.value);
	END IF;
	PERFORM bento.check_expression(watch_value.value, watch_value.what);
	RETURN format(E'(\n%s\n)', watch_value.value);
END
$$;

COMMENT ON FUNCTION bento.watch_value(text, name[], text, text) IS
	'SQL for a watch value: a quoted column of the row, or a checked SQL expression';

/*
 * Build the event query of a watch trigger from its arguments: a SELECT
 * over the transition tables returning (type, email, fields, details,
 * external_id, occurred_at) per event.  Also returns whether invalid events
 * raise, and how the trigger is named in messages.  Called by
 * bento.watch_trigger() the first time a backend fires the trigger and after
 * the table changes.
 *
 * The rows are visible to the watch's expressions as "new" and "old" (as in
 * a row trigger), and their columns unqualified: new's for INSERT and
 * UPDATE, old's for DELETE.  For UPDATE, old rows are paired with new ones
 * on the table's key (bento.watch_key).
 */
CREATE FUNCTION bento.watch_query(relid oid, operation text, trigger_name text,
								  new_table text, old_table text, args text[],
								  OUT query text, OUT raises boolean, OUT caller text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
	options_list constant text[] := ARRAY['watch', 'fields', 'details', 'condition',
										  'external_id', 'occurred_at', 'on_invalid'];
	tbl text;
	cur text;
	event_type text;
	opts jsonb := '{}';
	cols name[];
	key_cols name[];
	key_ops text[];
	bad text;
	opt text;
	f record;
	pairs text[] := '{}';
	fields_sql text := 'NULL::jsonb';
	inner_cols text[] := '{}';
	details_sql text;
	extid_sql text;
	source_sql text;
	where_sql text := '';
	outer_where text := '';
	need_cj boolean := false;
	need_oj boolean := false;
BEGIN
	SELECT format('%I.%I', n.nspname, c.relname) INTO tbl
	FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
	WHERE c.oid = watch_query.relid;
	caller := format('trigger "%s" on table %s', watch_query.trigger_name, tbl);

	IF coalesce(cardinality(watch_query.args), 0) NOT IN (2, 3) THEN
		RAISE EXCEPTION '% passes % arguments to bento.watch_trigger, which takes 2 or 3',
			caller, coalesce(cardinality(watch_query.args), 0)
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'The arguments are the event type, the email (a column or an SQL expression) '
						 'and optionally the other options as a JSON object.';
	END IF;
	event_type := watch_query.args[1];
	IF event_type = '' THEN
		RAISE EXCEPTION 'the event type of % is empty', caller
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF watch_query.args[2] = '' THEN
		RAISE EXCEPTION 'the email of % is empty', caller
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Name a column, or give an SQL expression over the row.';
	END IF;

	IF cardinality(watch_query.args) = 3 THEN
		BEGIN
			opts := watch_query.args[3]::jsonb;
		EXCEPTION WHEN invalid_text_representation THEN
			RAISE EXCEPTION 'the options of % are not valid JSON', caller
				USING ERRCODE = 'invalid_parameter_value', DETAIL = SQLERRM;
		END;
		IF jsonb_typeof(opts) IS DISTINCT FROM 'object' THEN
			RAISE EXCEPTION 'the options of % must be a JSON object', caller
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = format('They are a JSON %s.', coalesce(jsonb_typeof(opts), 'null'));
		END IF;
		SELECT CASE WHEN count(*) > 1 THEN 'options ' ELSE 'option ' END
			   || string_agg(format('"%s"', k), ', ' ORDER BY k) INTO bad
		FROM jsonb_object_keys(opts) AS k
		WHERE k <> ALL (options_list);
		IF bad IS NOT NULL THEN
			RAISE EXCEPTION 'unknown % in the options of %', bad, caller
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'The options are "watch", "fields", "details", "condition", "external_id", '
							 '"occurred_at" and "on_invalid".';
		END IF;
		FOREACH opt IN ARRAY options_list LOOP
			CONTINUE WHEN opt = 'fields';
			IF jsonb_typeof(opts -> opt) NOT IN ('string', 'null') THEN
				RAISE EXCEPTION 'option "%" of % must be a JSON string', opt, caller
					USING ERRCODE = 'invalid_parameter_value',
						  DETAIL = format('It is a JSON %s.', jsonb_typeof(opts -> opt));
			END IF;
		END LOOP;
	END IF;

	CASE coalesce(opts ->> 'on_invalid', 'skip')
		WHEN 'skip' THEN raises := false;
		WHEN 'raise' THEN raises := true;
		ELSE
			RAISE EXCEPTION 'option "on_invalid" of % must be "skip" or "raise"', caller
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = format('It is "%s".', opts ->> 'on_invalid');
	END CASE;

	cur := CASE watch_query.operation WHEN 'DELETE' THEN 'old' ELSE 'new' END;
	SELECT array_agg(a.attname ORDER BY a.attnum) INTO cols
	FROM pg_attribute a
	WHERE a.attrelid = watch_query.relid AND a.attnum > 0 AND NOT a.attisdropped;
	SELECT k.columns, k.operators INTO key_cols, key_ops FROM bento.watch_key(watch_query.relid) k;

	-- Where the rows come from.
	CASE watch_query.operation
		WHEN 'INSERT' THEN
			source_sql := format('%I AS bento_new', watch_query.new_table);
		WHEN 'DELETE' THEN
			source_sql := format('%I AS bento_old', watch_query.old_table);
		WHEN 'UPDATE' THEN
			IF key_cols IS NULL THEN
				RAISE EXCEPTION '% cannot pair old and new rows: table % has no primary key or replica identity index',
					caller, tbl
					USING ERRCODE = 'object_not_in_prerequisite_state',
						  HINT = 'An UPDATE watch needs a primary key (or REPLICA IDENTITY USING INDEX).';
			END IF;
			SELECT format('%I AS bento_new LEFT JOIN %I AS old ON %s', watch_query.new_table,
						  watch_query.old_table,
						  string_agg(format('bento_new.%I %s old.%I', c, o, c), ' AND ' ORDER BY i))
			INTO source_sql
			FROM unnest(key_cols, key_ops) WITH ORDINALITY AS x(c, o, i);
		ELSE
			RAISE EXCEPTION 'unknown operation "%"', watch_query.operation;
	END CASE;

	-- email
	inner_cols := inner_cols || format('%s::text AS email',
		bento.watch_value(watch_query.args[2], cols, cur, format('the email of %s', caller)));

	-- fields: {"bento_field": "column or expression", ...} or ["column", ...]
	CASE coalesce(jsonb_typeof(opts -> 'fields'), 'null')
		WHEN 'null' THEN
			NULL;
		WHEN 'object' THEN
			FOR f IN SELECT e.key, e.value FROM jsonb_each(opts -> 'fields') e ORDER BY e.key LOOP
				IF f.key = '' THEN
					RAISE EXCEPTION 'option "fields" of % has an empty field name', caller
						USING ERRCODE = 'invalid_parameter_value';
				END IF;
				IF jsonb_typeof(f.value) <> 'string' THEN
					RAISE EXCEPTION 'field "%" of % must map to a JSON string (a column or an SQL expression)',
						f.key, caller
						USING ERRCODE = 'invalid_parameter_value',
							  DETAIL = format('It is a JSON %s.', jsonb_typeof(f.value));
				END IF;
				pairs := pairs || format('%L, %s', f.key,
					bento.watch_value(f.value #>> '{}', cols, cur, format('field "%s" of %s', f.key, caller)));
			END LOOP;
		WHEN 'array' THEN
			FOR f IN SELECT e.value, e.ord FROM jsonb_array_elements(opts -> 'fields') WITH ORDINALITY e(value, ord) LOOP
				IF jsonb_typeof(f.value) <> 'string' OR NOT (f.value #>> '{}') = ANY (cols) THEN
					RAISE EXCEPTION 'element % of option "fields" of % is not a column of table %',
						f.ord, caller, tbl
						USING ERRCODE = 'invalid_parameter_value',
							  DETAIL = format('It is %s.', f.value),
							  HINT = 'A list names columns; map a field to an expression with an object: '
									 '{"field": "expression"}.';
				END IF;
				pairs := pairs || format('%L, %I.%I', f.value #>> '{}', cur, f.value #>> '{}');
			END LOOP;
		ELSE
			RAISE EXCEPTION 'option "fields" of % must be a JSON object or array', caller
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = format('It is a JSON %s.', jsonb_typeof(opts -> 'fields'));
	END CASE;
	IF cardinality(pairs) > 0 THEN
		-- jsonb_build_object takes at most 100 arguments: 50 fields a call.
		SELECT format('nullif(jsonb_strip_nulls(%s), ''{}''::jsonb)',
					  string_agg(format('jsonb_build_object(%s)', p), ' || ' ORDER BY g))
		INTO fields_sql
		FROM (SELECT (i - 1) / 50 AS g, string_agg(pair, ', ' ORDER BY i) AS p
			  FROM unnest(pairs) WITH ORDINALITY AS u(pair, i)
			  GROUP BY 1) chunks;
	END IF;
	inner_cols := inner_cols || format('%s AS fields', fields_sql);

	-- details
	IF opts ->> 'details' IS NOT NULL THEN
		inner_cols := inner_cols || format('%s::jsonb AS details',
			bento.watch_value(opts ->> 'details', cols, cur, format('the details of %s', caller)));
		details_sql := 'e.details';
	ELSE
		need_cj := true;
		details_sql := format('jsonb_build_object(''table'', %L, ''operation'', %L, ''row'', e.cj',
							  tbl, watch_query.operation);
		IF watch_query.operation = 'UPDATE' THEN
			need_oj := true;
			details_sql := details_sql
				|| ', ''changes'', (SELECT jsonb_object_agg(c.key, jsonb_build_object(''old'', e.oj -> c.key, ''new'', c.value))'
				|| ' FROM jsonb_each(e.cj) AS c WHERE (e.oj -> c.key) IS DISTINCT FROM c.value)';
		END IF;
		details_sql := details_sql || ')';
	END IF;

	-- external_id
	IF opts ->> 'external_id' IS NOT NULL THEN
		inner_cols := inner_cols || format('%s::text AS external_id',
			bento.watch_value(opts ->> 'external_id', cols, cur, format('the external_id of %s', caller)));
		extid_sql := 'e.external_id';
	ELSIF key_cols IS NULL THEN
		extid_sql := 'NULL::text';
	ELSE
		IF cardinality(key_cols) = 1 THEN
			inner_cols := inner_cols || format('(%I.%I)::text AS key', cur, key_cols[1]);
		ELSE
			inner_cols := inner_cols || (SELECT format('jsonb_build_array(%s)::text AS key',
											 string_agg(format('%I.%I', cur, c), ', ' ORDER BY i))
										 FROM unnest(key_cols) WITH ORDINALITY AS x(c, i));
		END IF;
		extid_sql := format('%L || e.key', format('%s:%s:%s:', event_type, tbl, lower(watch_query.operation)));
		IF watch_query.operation = 'UPDATE' THEN
			need_cj := true;
			need_oj := true;
			extid_sql := extid_sql || ' || '':'' || md5(coalesce(e.oj::text, '''') || e.cj::text)';
		END IF;
	END IF;

	-- occurred_at
	IF opts ->> 'occurred_at' IS NOT NULL THEN
		inner_cols := inner_cols || format('coalesce(%s::timestamptz, now()) AS occurred_at',
			bento.watch_value(opts ->> 'occurred_at', cols, cur, format('the occurred_at of %s', caller)));
	ELSE
		inner_cols := inner_cols || 'now() AS occurred_at'::text;
	END IF;

	-- condition; by default an UPDATE counts only for rows whose values changed
	IF opts ->> 'condition' IS NOT NULL THEN
		where_sql := format(E'\n\tWHERE %s',
			bento.watch_value(opts ->> 'condition', cols, cur, format('the condition of %s', caller)));
	ELSIF watch_query.operation = 'UPDATE' THEN
		need_cj := true;
		need_oj := true;
		outer_where := E'\nWHERE e.cj IS DISTINCT FROM e.oj';
	END IF;

	IF need_cj THEN
		inner_cols := inner_cols || format('to_jsonb(%I) AS cj', cur);
	END IF;
	IF need_oj THEN
		inner_cols := inner_cols || 'to_jsonb(old) AS oj'::text;
	END IF;

	query := format(E'SELECT %L::text AS type, e.email, e.fields, (%s)::jsonb AS details,\n'
					|| E'       (%s)::text AS external_id, e.occurred_at\n'
					|| E'FROM %s\n'
					|| E'CROSS JOIN LATERAL (\n'
					|| E'\tSELECT %s\n'
					|| E'\tFROM (SELECT bento_%s.*) AS %I%s\n'
					|| E'\tOFFSET 0) AS e%s',
					event_type, details_sql, extid_sql, source_sql,
					array_to_string(inner_cols, E',\n\t       '),
					cur, cur, where_sql, outer_where);
END
$fn$;

COMMENT ON FUNCTION bento.watch_query(oid, text, text, text, text, text[]) IS
	'The event query of a watch trigger, built from its arguments (used by bento.watch_trigger)';

/*
 * What a watch trigger's arguments say, for bento.watched: each option, and
 * a sentence.  Never fails: a hand-written trigger with bad options is
 * described as such.
 */
CREATE FUNCTION bento.watch_describe(relid oid, trigger_name name, tgtype smallint, args text[],
									 OUT watch text, OUT operation text, OUT event_type text,
									 OUT email text, OUT fields jsonb, OUT details text,
									 OUT condition text, OUT external_id text, OUT occurred_at text,
									 OUT on_invalid text, OUT description text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
	tbl text;
	opts jsonb;
	problem text;
	key_cols name[];
	cols name[];
	parts text[] := '{}';
	rowword text;
BEGIN
	SELECT format('%I.%I', n.nspname, c.relname) INTO tbl
	FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
	WHERE c.oid = watch_describe.relid;
	SELECT array_agg(a.attname) INTO cols
	FROM pg_attribute a
	WHERE a.attrelid = watch_describe.relid AND a.attnum > 0 AND NOT a.attisdropped;

	operation := concat_ws(' OR ',
						   CASE WHEN tgtype & 4 <> 0 THEN 'INSERT' END,
						   CASE WHEN tgtype & 16 <> 0 THEN 'UPDATE' END,
						   CASE WHEN tgtype & 8 <> 0 THEN 'DELETE' END,
						   CASE WHEN tgtype & 32 <> 0 THEN 'TRUNCATE' END);
	event_type := watch_describe.args[1];
	email := watch_describe.args[2];
	IF cardinality(watch_describe.args) >= 3 THEN
		BEGIN
			opts := watch_describe.args[3]::jsonb;
		EXCEPTION WHEN OTHERS THEN
			problem := 'its options are not valid JSON: ' || SQLERRM;
		END;
	END IF;
	IF jsonb_typeof(opts) IS DISTINCT FROM 'object' THEN
		problem := coalesce(problem, CASE WHEN opts IS NOT NULL THEN 'its options are not a JSON object' END);
		opts := '{}';
	END IF;
	watch := coalesce(opts ->> 'watch', watch_describe.trigger_name);
	fields := opts -> 'fields';
	details := opts ->> 'details';
	condition := opts ->> 'condition';
	external_id := opts ->> 'external_id';
	occurred_at := opts ->> 'occurred_at';
	on_invalid := coalesce(opts ->> 'on_invalid', 'skip');

	IF tgtype & 1 <> 0 OR tgtype & 66 <> 0 THEN
		problem := coalesce(problem, 'it must be an AFTER ... FOR EACH STATEMENT trigger');
	ELSIF cardinality(watch_describe.args) NOT IN (2, 3) OR event_type = '' OR email = '' THEN
		problem := coalesce(problem, 'it needs 2 or 3 arguments: event type, email, options');
	END IF;
	IF problem IS NOT NULL THEN
		description := format('Trigger "%s" calls bento.watch_trigger but %s; it fails when it fires.',
							  watch_describe.trigger_name, problem);
		RETURN;
	END IF;

	rowword := CASE operation
				   WHEN 'INSERT' THEN format('For each row inserted into %s', tbl)
				   WHEN 'UPDATE' THEN format('For each row updated in %s', tbl)
				   WHEN 'DELETE' THEN format('For each row deleted from %s', tbl)
				   ELSE format('For each row written to %s by %s', tbl, operation)
			   END;
	IF condition IS NOT NULL THEN
		rowword := rowword || format(' for which %s holds', condition);
	ELSIF operation = 'UPDATE' THEN
		rowword := rowword || ' whose values changed';
	END IF;
	parts := parts || format('%s, queue the event "%s" for the address %s', rowword,
							 event_type,
							 CASE WHEN email = ANY (cols) THEN format('in column %I', email)
								  ELSE format('given by %s', email) END);
	IF jsonb_typeof(fields) = 'object' THEN
		parts := parts || (SELECT 'with fields ' || string_agg(
								format('"%s" from %s', e.key,
									   CASE WHEN e.value #>> '{}' = ANY (cols)
											THEN format('column %I', e.value #>> '{}')
											ELSE coalesce(e.value #>> '{}', 'null') END),
								', ' ORDER BY e.key)
							FROM jsonb_each(fields) e);
	ELSIF jsonb_typeof(fields) = 'array' THEN
		parts := parts || (SELECT 'with fields from columns ' || string_agg(format('%I', e #>> '{}'), ', ')
							FROM jsonb_array_elements(fields) e);
	END IF;
	IF details IS NOT NULL THEN
		parts := parts || format('with details %s', details);
	ELSIF operation = 'UPDATE' THEN
		parts := parts || 'with details holding the table, the operation, the new row and the changed columns'
						  ' (old and new values)'::text;
	ELSE
		parts := parts || 'with details holding the table, the operation and the row'::text;
	END IF;
	IF external_id IS NOT NULL THEN
		parts := parts || format('with external_id %s', external_id);
	ELSE
		SELECT k.columns INTO key_cols FROM bento.watch_key(watch_describe.relid) k;
		IF key_cols IS NULL THEN
			parts := parts || 'with no external_id (the table has no key), so nothing is deduplicated'::text;
		ELSE
			parts := parts || format('with external_id %s followed by the %s%s',
				quote_literal(format('%s:%s:%s:', event_type, tbl, lower(operation))),
				CASE WHEN cardinality(key_cols) = 1 THEN format('value of %I', key_cols[1])
					 ELSE (SELECT format('values of %s as a JSON array', string_agg(format('%I', c), ', '))
						   FROM unnest(key_cols) c) END,
				CASE WHEN operation = 'UPDATE' THEN ', a colon and the MD5 of the old and new rows' ELSE '' END);
		END IF;
	END IF;
	IF event_type = '$purchase' THEN
		parts[cardinality(parts)] := parts[cardinality(parts)]
			|| ', also sent as details.unique.key when the details have none';
	END IF;
	IF occurred_at IS NOT NULL THEN
		parts := parts || format('dated %s', occurred_at);
	END IF;
	description := array_to_string(parts, '; ') || '. '
		|| CASE on_invalid
			   WHEN 'raise' THEN 'An event that bento_track would refuse fails the statement.'
			   ELSE 'Events that bento_track would refuse are skipped and counted.'
		   END;
END
$fn$;

COMMENT ON FUNCTION bento.watch_describe(oid, name, smallint, text[]) IS
	'The options of a watch trigger, and a sentence describing it';

/*
 * bento.watched: every trigger that calls bento.watch_trigger(), in words.
 */
CREATE VIEW bento.watched AS
SELECT t.tgrelid::regclass AS table_name,
	   d.watch,
	   d.operation,
	   d.event_type,
	   d.email,
	   d.fields,
	   d.details,
	   d.condition,
	   d.external_id,
	   d.occurred_at,
	   d.on_invalid,
	   t.tgenabled <> 'D' AS enabled,
	   t.tgname AS trigger_name,
	   coalesce(s.skipped, 0) AS skipped_events,
	   s.last_skipped_at,
	   s.last_skip_error,
	   CASE WHEN t.tgenabled = 'D' THEN 'Disabled. ' ELSE '' END || d.description AS description
FROM pg_catalog.pg_trigger t
	CROSS JOIN LATERAL bento.watch_describe(t.tgrelid, t.tgname, t.tgtype,
											bento.trigger_arguments(t.tgargs, t.tgnargs)) d
	LEFT JOIN LATERAL (SELECT sum(w.skipped)::bigint AS skipped,
							  max(w.skipped_at) AS last_skipped_at,
							  (array_agg(w.first_error ORDER BY w.skipped_at DESC, w.ctid DESC))[1] AS last_skip_error
					   FROM bento.watch_skips w
					   WHERE w.trigger_oid = t.oid) s ON true
WHERE t.tgfoid = 'bento.watch_trigger()'::pg_catalog.regprocedure;

COMMENT ON VIEW bento.watched IS
	'Tables watched by bento: one row per watch trigger, with its options, skipped events and a description';

GRANT SELECT ON bento.watched TO pg_monitor;

/*
 * bento_watch: watch a table.  One trigger per operation, named
 * bento_<name>_<operation>, checked before it is kept.
 */
CREATE FUNCTION bento_watch(table_name regclass,
							event_type text,
							email text,
							operations text[] DEFAULT ARRAY['INSERT'],
							fields jsonb DEFAULT NULL,
							details text DEFAULT NULL,
							condition text DEFAULT NULL,
							external_id text DEFAULT NULL,
							occurred_at text DEFAULT NULL,
							on_invalid text DEFAULT 'skip',
							name text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
	watch_name text := coalesce(bento_watch.name, bento_watch.event_type);
	tbl text;
	kind "char";
	schema_name text;
	ops text[];
	op text;
	opts jsonb;
	tg text;
	tg_oid oid;
BEGIN
	IF NOT coalesce((SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = current_user), false) THEN
		RAISE EXCEPTION 'permission denied to create a bento watch'
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'Only superusers may create watches: a watch runs its expressions on every write to the table.';
	END IF;
	IF bento_watch.table_name IS NULL THEN
		RAISE EXCEPTION 'argument "table_name" of bento_watch must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	SELECT format('%I.%I', n.nspname, c.relname), c.relkind, n.nspname INTO tbl, kind, schema_name
	FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
	WHERE c.oid = bento_watch.table_name;
	IF kind IS NULL THEN
		RAISE EXCEPTION 'relation with OID % does not exist', bento_watch.table_name::oid
			USING ERRCODE = 'undefined_table';
	END IF;
	IF kind NOT IN ('r', 'p') THEN
		RAISE EXCEPTION '% is not a table', tbl
			USING ERRCODE = 'wrong_object_type',
				  HINT = 'Only ordinary and partitioned tables can be watched.';
	END IF;
	IF schema_name = 'bento' THEN
		RAISE EXCEPTION 'cannot watch %: it belongs to the bento extension', tbl
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF bento_watch.event_type IS NULL OR bento_watch.email IS NULL THEN
		RAISE EXCEPTION 'argument "%" of bento_watch must not be null',
			CASE WHEN bento_watch.event_type IS NULL THEN 'event_type' ELSE 'email' END
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF bento_watch.event_type = '' OR bento_watch.email = '' THEN
		RAISE EXCEPTION 'argument "%" of bento_watch must not be empty',
			CASE WHEN bento_watch.event_type = '' THEN 'event_type' ELSE 'email' END
			USING ERRCODE = 'invalid_parameter_value';
	END IF;

	IF coalesce(cardinality(bento_watch.operations), 0) = 0 OR array_position(bento_watch.operations, NULL) IS NOT NULL THEN
		RAISE EXCEPTION 'argument "operations" of bento_watch must list INSERT, UPDATE or DELETE'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	SELECT string_agg(format('"%s"', o), ', ') INTO op
	FROM unnest(bento_watch.operations) o
	WHERE upper(btrim(o)) NOT IN ('INSERT', 'UPDATE', 'DELETE');
	IF op IS NOT NULL THEN
		RAISE EXCEPTION 'argument "operations" of bento_watch has unknown operations: %', op
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'The operations are INSERT, UPDATE and DELETE.';
	END IF;
	SELECT array_agg(o ORDER BY array_position(ARRAY['INSERT', 'UPDATE', 'DELETE'], o)) INTO ops
	FROM (SELECT DISTINCT upper(btrim(x)) AS o FROM unnest(bento_watch.operations) x) d;

	IF bento_watch.on_invalid IS NULL OR bento_watch.on_invalid NOT IN ('skip', 'raise') THEN
		RAISE EXCEPTION 'argument "on_invalid" of bento_watch must be ''skip'' or ''raise'''
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF watch_name = '' THEN
		RAISE EXCEPTION 'argument "name" of bento_watch must not be empty'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF octet_length(format('bento_%s_update', watch_name)) > 63 THEN
		RAISE EXCEPTION 'the watch name "%" is too long', watch_name
			USING ERRCODE = 'name_too_long',
				  DETAIL = 'Its triggers are named bento_<name>_<operation>, at most 63 bytes.',
				  HINT = 'Pass a shorter name => ''...''.';
	END IF;
	IF EXISTS (SELECT 1 FROM bento.watched w
			   WHERE w.table_name = bento_watch.table_name AND w.watch = watch_name) THEN
		RAISE EXCEPTION 'table % already has a watch named "%"', tbl, watch_name
			USING ERRCODE = 'duplicate_object',
				  HINT = format('Remove it first with bento_unwatch(%L, %L), or pass another name.', tbl, watch_name);
	END IF;

	-- Skip counts of triggers that no longer exist (their table was dropped).
	DELETE FROM bento.watch_skips s
	WHERE NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.oid = s.trigger_oid);

	-- The options that were given (the fields mapping holds no JSON nulls).
	opts := jsonb_strip_nulls(jsonb_build_object(
		'watch', watch_name,
		'fields', bento_watch.fields,
		'details', bento_watch.details,
		'condition', bento_watch.condition,
		'external_id', bento_watch.external_id,
		'occurred_at', bento_watch.occurred_at,
		'on_invalid', bento_watch.on_invalid));

	FOREACH op IN ARRAY ops LOOP
		tg := format('bento_%s_%s', watch_name, lower(op));
		EXECUTE format('CREATE TRIGGER %I AFTER %s ON %s REFERENCING %s FOR EACH STATEMENT '
					   'EXECUTE FUNCTION bento.watch_trigger(%L, %L, %L)',
					   tg, op, tbl,
					   CASE op WHEN 'INSERT' THEN 'NEW TABLE AS bento_new'
							   WHEN 'UPDATE' THEN 'OLD TABLE AS bento_old NEW TABLE AS bento_new'
							   ELSE 'OLD TABLE AS bento_old' END,
					   bento_watch.event_type, bento_watch.email, opts::text);
		SELECT t.oid INTO tg_oid FROM pg_trigger t
		WHERE t.tgrelid = bento_watch.table_name AND t.tgname = tg;
		PERFORM bento.check_watch(tg_oid);
	END LOOP;
	RETURN watch_name;
END
$fn$;

REVOKE ALL ON FUNCTION bento_watch(regclass, text, text, text[], jsonb, text, text, text, text, text, text) FROM PUBLIC;

COMMENT ON FUNCTION bento_watch(regclass, text, text, text[], jsonb, text, text, text, text, text, text) IS
	'Queue a Bento event for each row an INSERT, UPDATE or DELETE writes to a table; returns the watch''s name';

/*
 * bento_unwatch: remove a table's watch (or, without a name, all of them).
 */
CREATE FUNCTION bento_unwatch(table_name regclass, name text DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
	t record;
	n integer := 0;
BEGIN
	IF NOT coalesce((SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = current_user), false) THEN
		RAISE EXCEPTION 'permission denied to remove a bento watch'
			USING ERRCODE = 'insufficient_privilege',
				  HINT = 'The table''s owner may drop the watch''s triggers with DROP TRIGGER.';
	END IF;
	IF bento_unwatch.table_name IS NULL THEN
		RAISE EXCEPTION 'argument "table_name" of bento_unwatch must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	FOR t IN SELECT tg.oid, tg.tgname, format('%I.%I', ns.nspname, c.relname) AS tbl
			 FROM bento.watched w
				 JOIN pg_trigger tg ON tg.tgrelid = w.table_name AND tg.tgname = w.trigger_name
				 JOIN pg_class c ON c.oid = tg.tgrelid
				 JOIN pg_namespace ns ON ns.oid = c.relnamespace
			 WHERE w.table_name = bento_unwatch.table_name
			   AND (bento_unwatch.name IS NULL OR w.watch = bento_unwatch.name)
			 ORDER BY tg.tgname
	LOOP
		EXECUTE format('DROP TRIGGER %I ON %s', t.tgname, t.tbl);
		DELETE FROM bento.watch_skips s WHERE s.trigger_oid = t.oid;
		n := n + 1;
	END LOOP;
	IF n = 0 THEN
		RAISE EXCEPTION 'table % has no bento watch%', bento_unwatch.table_name,
			CASE WHEN bento_unwatch.name IS NOT NULL THEN format(' named "%s"', bento_unwatch.name) ELSE '' END
			USING ERRCODE = 'undefined_object',
				  HINT = 'SELECT * FROM bento.watched lists the watches.';
	END IF;
	RETURN n;
END
$fn$;

REVOKE ALL ON FUNCTION bento_unwatch(regclass, text) FROM PUBLIC;

COMMENT ON FUNCTION bento_unwatch(regclass, text) IS
	'Remove the watch of that name from a table (all its watches when name is NULL); returns how many triggers were dropped';
