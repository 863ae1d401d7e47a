--
-- bento.status: counts per status, age of the oldest undelivered event,
-- the last recorded delivery, and whether the worker runs.
--
-- The worker runs in this instance (t/regress.conf preloads bento with
-- bento.database = contrib_regression) but has no credentials, so it never
-- claims anything.
--
CREATE EXTENSION bento;

-- The worker may still be starting (it retries every 5 s until this
-- database exists): wait up to 60 s for it to show up.
DO $$
BEGIN
	FOR i IN 1 .. 600 LOOP
		PERFORM pg_stat_clear_snapshot();
		EXIT WHEN EXISTS (SELECT 1 FROM pg_stat_activity WHERE backend_type = 'bento');
		PERFORM pg_sleep(0.1);
	END LOOP;
END
$$;
SELECT datname, backend_type FROM pg_stat_activity WHERE backend_type = 'bento';

-- Empty outbox: one row, zero counts, no age, no delivery.
SELECT * FROM bento.status;
SELECT count(*) AS status_rows FROM bento.status;

-- Three events: one stays pending, one is marked sent, one dead.
SELECT bento_track('a', 'pending@example.com') AS p_id \gset
SELECT bento_track('b', 'sent@example.com') AS s_id \gset
SELECT bento_track('c', 'dead@example.com') AS d_id \gset
UPDATE bento.outbox SET status = 'sent', sent_at = now(), attempts = 1 WHERE id = :s_id;
UPDATE bento.outbox SET status = 'dead', last_error = 'HTTP 422: bad event', attempts = 1 WHERE id = :d_id;
SELECT pending, sending, sent, dead,
       oldest_pending_age IS NOT NULL AS has_age,
       oldest_pending_age >= interval '0' AS age_not_negative,
       last_delivery_at, last_delivery_outcome, last_http_status, last_transport_error,
       worker_running
FROM bento.status;

-- oldest_pending_age measures from the oldest pending or sending event's
-- enqueued_at, ignoring sent and dead ones.  (In one transaction, so that
-- now() is the same in the UPDATEs and the view.)
BEGIN;
UPDATE bento.outbox SET enqueued_at = now() - interval '2 days' WHERE id = :s_id;
UPDATE bento.outbox SET enqueued_at = now() - interval '3 days' WHERE id = :d_id;
UPDATE bento.outbox SET enqueued_at = now() - interval '1 hour' WHERE id = :p_id;
SELECT oldest_pending_age FROM bento.status;
COMMIT;
SELECT bento_track('e', 'sending@example.com') AS g_id \gset
BEGIN;
UPDATE bento.outbox SET status = 'sending', attempts = 1,
       enqueued_at = now() - interval '5 hours' WHERE id = :g_id;
SELECT pending, sending, sent, dead, oldest_pending_age FROM bento.status;
COMMIT;

-- Only sent and dead rows: no age.
UPDATE bento.outbox SET status = 'sent' WHERE id IN (:p_id, :g_id);
SELECT pending, sending, sent, dead, oldest_pending_age FROM bento.status;

-- The last delivery is the newest finished one; a request still in flight
-- does not count.
INSERT INTO bento.deliveries (started_at, finished_at, event_count, outcome, http_status)
VALUES ('2024-01-01 10:00:00+00', '2024-01-01 10:00:01+00', 2, 'delivered', 200);
SELECT last_delivery_at, last_delivery_outcome, last_http_status, last_transport_error FROM bento.status;
INSERT INTO bento.deliveries (started_at, finished_at, event_count, outcome, transport_error)
VALUES ('2024-01-01 11:00:00+00', '2024-01-01 11:00:30+00', 1, 'unknown',
        'Operation timed out after 30000 milliseconds with 0 bytes received');
INSERT INTO bento.deliveries (started_at, event_count) VALUES ('2024-01-01 12:00:00+00', 3);
SELECT last_delivery_at, last_delivery_outcome, last_http_status, last_transport_error FROM bento.status;
SELECT outcome, finished_at IS NULL AS unfinished FROM bento.deliveries ORDER BY id;

-- Ordinary roles cannot read it (schema bento is closed to PUBLIC).
CREATE ROLE regress_bento_monitor;
SET ROLE regress_bento_monitor;
SELECT * FROM bento.status;
RESET ROLE;
DROP ROLE regress_bento_monitor;

-- The worker claimed nothing (no credentials): no row carries a delivery.
SELECT count(*) AS claimed_rows FROM bento.outbox WHERE delivery_id IS NOT NULL;

DROP EXTENSION bento;
