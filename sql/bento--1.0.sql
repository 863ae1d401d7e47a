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
