--
-- bento_track(): the happy path, the row it queues, transactions,
-- privileges, search_path safety, and the extension's life cycle.
--
-- The test instance (t/regress.conf) has no credentials, so the worker never
-- claims anything: rows stay exactly as bento_track() left them.
--
CREATE EXTENSION bento;

-- Objects in the right places: bento_track in the extension schema (public),
-- everything else in schema bento.
SELECT n.nspname, e.extname, e.extversion, e.extrelocatable
FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
WHERE e.extname = 'bento';
SELECT pg_describe_object(classid, objid, objsubid) AS object
FROM pg_depend
WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
  AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'bento')
ORDER BY 1;
\df bento_track
SELECT p.prosecdef, p.provolatile, p.proparallel, p.proisstrict, p.proconfig
FROM pg_proc p WHERE p.oid = 'bento_track'::regproc;
SELECT obj_description('bento_track'::regproc, 'pg_proc') IS NOT NULL AS has_comment,
       obj_description('bento.outbox'::regclass, 'pg_class') IS NOT NULL AS outbox_comment,
       obj_description('bento.deliveries'::regclass, 'pg_class') IS NOT NULL AS deliveries_comment,
       obj_description('bento.status'::regclass, 'pg_class') IS NOT NULL AS status_comment;
SELECT obj_description('bento_track'::regproc, 'pg_proc');

-- The default search_path finds bento_track; positional call with every
-- argument.
SHOW search_path;
SELECT bento_track('$purchase', 'buyer@example.com',
                   '{"first_name": "Ada", "plan": "pro"}',
                   '{"value": {"amount": 3000, "currency": "USD"}, "sku": "A-1"}',
                   'order-1',
                   '2024-02-29 12:34:56.789+00') AS id1 \gset
SELECT :id1 > 0 AS positive_id;
SELECT type, email, fields, details, external_id,
       occurred_at AT TIME ZONE 'UTC' AS occurred_at_utc,
       status, attempts, last_error, sent_at, delivery_id,
       enqueued_at IS NOT NULL AND enqueued_at <= now() AS enqueued,
       next_attempt_at <= now() AS due
FROM bento.outbox WHERE id = :id1;

-- Named arguments; the optional ones default to NULL, occurred_at to now().
BEGIN;
SELECT bento_track(type => 'signup', email => 'new@example.com') AS id2 \gset
SELECT type, email, fields, details, external_id, status, attempts,
       occurred_at = now() AS occurred_now,
       enqueued_at = now() AS enqueued_now
FROM bento.outbox WHERE id = :id2;
COMMIT;

-- An explicit occurred_at is kept as given, past or future.
SELECT bento_track('login', 'old@example.com', occurred_at => '1999-12-31 23:59:59-05') AS id3 \gset
SELECT bento_track('login', 'future@example.com', occurred_at => '2100-01-01 00:00:00+00') AS id4 \gset
SELECT occurred_at = '2000-01-01 04:59:59+00'::timestamptz AS past_kept
FROM bento.outbox WHERE id = :id3;
SELECT occurred_at = '2100-01-01 00:00:00+00'::timestamptz AS future_kept
FROM bento.outbox WHERE id = :id4;
SELECT count(*) AS queued FROM bento.outbox;

-- Each call returns a new, increasing id.
SELECT :id1 < :id2 AND :id2 < :id3 AND :id3 < :id4 AS increasing;

-- Several events in one statement.
SELECT count(DISTINCT bento_track('bulk', 'bulk' || g || '@example.com', jsonb_build_object('n', g)))
FROM generate_series(1, 5) g;
SELECT count(*) AS bulk_rows, min(fields->>'n') AS min_n, max((fields->>'n')::int) AS max_n
FROM bento.outbox WHERE type = 'bulk';

-- The event belongs to the caller's transaction: rolled back, nothing is
-- queued.
SELECT count(*) AS before_rollback FROM bento.outbox \gset
BEGIN;
SELECT bento_track('rolled_back', 'gone@example.com') > 0 AS tracked;
SELECT count(*) = :before_rollback + 1 AS visible_inside FROM bento.outbox;
ROLLBACK;
SELECT count(*) = :before_rollback AS nothing_queued FROM bento.outbox;
SELECT count(*) AS rolled_back_rows FROM bento.outbox WHERE type = 'rolled_back';

-- A rolled-back savepoint drops only the events tracked after it.
BEGIN;
SELECT bento_track('sp', 'kept1@example.com') > 0 AS tracked;
SAVEPOINT s;
SELECT bento_track('sp', 'dropped@example.com') > 0 AS tracked;
ROLLBACK TO SAVEPOINT s;
SELECT bento_track('sp', 'kept2@example.com') > 0 AS tracked;
COMMIT;
SELECT email FROM bento.outbox WHERE type = 'sp' ORDER BY id;

-- Same with a PL/pgSQL exception block (an implicit savepoint).
DO $$
BEGIN
	PERFORM bento_track('plpgsql', 'kept3@example.com');
	BEGIN
		PERFORM bento_track('plpgsql', 'dropped2@example.com');
		RAISE EXCEPTION 'boom';
	EXCEPTION WHEN raise_exception THEN
		RAISE NOTICE 'caught: %', SQLERRM;
	END;
END
$$;
SELECT email FROM bento.outbox WHERE type = 'plpgsql' ORDER BY id;

-- An error later in the transaction takes the events with it.
BEGIN;
SELECT bento_track('aborted', 'gone2@example.com') > 0 AS tracked;
SELECT 1 / 0;
COMMIT;
SELECT count(*) AS aborted_rows FROM bento.outbox WHERE type = 'aborted';

--
-- Privileges.  bento_track is SECURITY DEFINER: any role may call it, but
-- schema bento stays closed to ordinary roles.
--
CREATE ROLE regress_bento_user;
SELECT has_function_privilege('regress_bento_user', 'bento_track(text,text,jsonb,jsonb,text,timestamptz)', 'EXECUTE') AS can_execute,
       has_schema_privilege('regress_bento_user', 'bento', 'USAGE') AS schema_usage,
       has_table_privilege('regress_bento_user', 'bento.outbox', 'SELECT') AS can_select;

SET ROLE regress_bento_user;
SELECT bento_track('unprivileged', 'user@example.com', external_id => 'unpriv-1') AS uid \gset
-- a second call goes through the dedupe lookup, also as definer
SELECT bento_track('unprivileged', 'user@example.com', external_id => 'unpriv-1') = :uid AS same_id;
SELECT * FROM bento.outbox;
SELECT * FROM bento.status;
UPDATE bento.outbox SET status = 'sent';
DELETE FROM bento.outbox;
INSERT INTO bento.outbox (type, email, occurred_at) VALUES ('forged', 'x@example.com', now());
TRUNCATE bento.outbox;
SELECT * FROM bento.deliveries;
RESET ROLE;
SELECT type, email, external_id, status FROM bento.outbox WHERE id = :uid;
SELECT count(*) AS unpriv_rows FROM bento.outbox WHERE type = 'unprivileged';
SELECT count(*) AS forged_rows FROM bento.outbox WHERE type = 'forged';

-- Inside the function, current_user is the definer but the caller's
-- transaction is used: the caller's rollback still discards the event.
SET ROLE regress_bento_user;
BEGIN;
SELECT bento_track('unprivileged_rb', 'user@example.com') > 0 AS tracked;
ROLLBACK;
RESET ROLE;
SELECT count(*) AS unpriv_rolled_back FROM bento.outbox WHERE type = 'unprivileged_rb';

--
-- search_path tricks must not redirect the insert or the dedupe lookup.
-- The role owns a schema with its own "outbox" table, a temporary "outbox"
-- table, and its own text = text operator that raises an error if it is
-- ever called.
--
-- A fresh session, so that bento_track prepares its statements for the
-- first time while the trap is set.
\c
CREATE SCHEMA regress_trap AUTHORIZATION regress_bento_user;
SET ROLE regress_bento_user;
CREATE TABLE regress_trap.outbox (id bigint, type text, email text, fields jsonb,
                                  details jsonb, external_id text, occurred_at timestamptz);
CREATE FUNCTION regress_trap.trap_eq(text, text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
	RAISE EXCEPTION 'trap operator called by %', current_user;
END
$$;
CREATE OPERATOR regress_trap.= (LEFTARG = text, RIGHTARG = text, FUNCTION = regress_trap.trap_eq);
CREATE TEMP TABLE outbox (id bigint, type text, email text, fields jsonb,
                          details jsonb, external_id text, occurred_at timestamptz);
SET search_path = regress_trap, pg_temp, pg_catalog, public;
-- the trap operator is live for the role's own queries
SELECT 'a'::text = 'a'::text;
SELECT bento_track('trapped', 'trap@example.com', external_id => 'trap-1') AS tid \gset
SELECT bento_track('trapped', 'trap@example.com', external_id => 'trap-1') AS tid2 \gset
SELECT :tid OPERATOR(pg_catalog.=) :tid2 AS same_id;
SELECT count(*) AS trap_rows FROM regress_trap.outbox;
SELECT count(*) AS temp_rows FROM pg_temp.outbox;
RESET search_path;
RESET ROLE;
SELECT type, email, external_id FROM bento.outbox WHERE id = :tid;
SELECT count(*) AS trapped_rows FROM bento.outbox WHERE external_id = 'trap-1';
DROP TABLE pg_temp.outbox;

-- The caller's search_path is back to what it was after the call.
SET search_path = regress_trap, public;
SELECT bento_track('path', 'path@example.com') > 0 AS tracked;
SHOW search_path;
RESET search_path;

DROP SCHEMA regress_trap CASCADE;

--
-- DROP EXTENSION removes schema bento with its tables; CREATE EXTENSION
-- works again, and so does bento_track in the same session (its saved plans
-- are re-analyzed against the new tables).
--
DROP EXTENSION bento;
SELECT count(*) AS bento_schemas FROM pg_namespace WHERE nspname = 'bento';
SELECT count(*) AS bento_functions FROM pg_proc WHERE proname = 'bento_track';
SELECT to_regclass('bento.outbox') AS outbox, to_regclass('bento.deliveries') AS deliveries;
SELECT bento_track('dropped', 'x@example.com');
CREATE EXTENSION bento;
SELECT count(*) AS empty_outbox FROM bento.outbox;
SELECT bento_track('recreated', 'again@example.com') AS nid \gset
SELECT type, email, status, attempts FROM bento.outbox WHERE id = :nid;
SELECT bento_track('recreated', 'again@example.com', external_id => 'recreated-1') AS eid \gset
SELECT bento_track('recreated', 'again@example.com', external_id => 'recreated-1') = :eid AS deduped;
SELECT count(*) AS recreated_rows FROM bento.outbox;

-- A second CREATE fails cleanly; the extension cannot be relocated.
CREATE EXTENSION bento;
CREATE SCHEMA regress_elsewhere;
ALTER EXTENSION bento SET SCHEMA regress_elsewhere;
DROP SCHEMA regress_elsewhere;

DROP EXTENSION bento;
SELECT count(*) AS bento_schemas FROM pg_namespace WHERE nspname = 'bento';
DROP ROLE regress_bento_user;
