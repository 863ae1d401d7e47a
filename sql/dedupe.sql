--
-- Deduplication on external_id: one row per external_id, whatever its
-- status; the first event wins and its id is returned to later callers.
--
CREATE EXTENSION bento;

-- Same external_id twice: same id, one row.
SELECT bento_track('$purchase', 'a@example.com', external_id => 'order-1') AS first_id \gset
SELECT bento_track('$purchase', 'a@example.com', external_id => 'order-1') = :first_id AS same_id;
SELECT count(*) AS rows_for_order_1 FROM bento.outbox WHERE external_id = 'order-1';

-- A different payload with the same external_id: the first event is kept
-- untouched, and the id of the first is returned.
SELECT bento_track('$refund', 'b@example.com',
                   fields => '{"plan": "changed"}',
                   details => '{"value": {"amount": 1, "currency": "EUR"}}',
                   external_id => 'order-1',
                   occurred_at => '2001-01-01 00:00:00+00') = :first_id AS same_id;
SELECT type, email, fields, details, occurred_at = '2001-01-01 00:00:00+00' AS took_new_occurred_at,
       status, attempts
FROM bento.outbox WHERE external_id = 'order-1';
SELECT count(*) AS rows_for_order_1 FROM bento.outbox WHERE external_id = 'order-1';

-- Distinct external_ids give distinct rows; the comparison is exact
-- (case, trailing space).
SELECT bento_track('e', 'a@example.com', external_id => 'order-2') <> :first_id AS new_id;
SELECT bento_track('e', 'a@example.com', external_id => 'ORDER-1') <> :first_id AS new_id;
SELECT bento_track('e', 'a@example.com', external_id => 'order-1 ') <> :first_id AS new_id;
SELECT external_id FROM bento.outbox ORDER BY id;

-- NULL external_id never dedupes: identical events give distinct rows.
SELECT count(DISTINCT bento_track('pageview', 'a@example.com')) AS distinct_ids
FROM generate_series(1, 3);
SELECT count(*) AS pageviews FROM bento.outbox WHERE type = 'pageview' AND external_id IS NULL;

-- Several calls with the same external_id in one statement: one row.
SELECT count(DISTINCT bento_track('bulk', 'a@example.com', external_id => 'bulk-1')) AS distinct_ids
FROM generate_series(1, 4);
SELECT count(*) AS bulk_rows FROM bento.outbox WHERE external_id = 'bulk-1';

-- Dedupe holds whatever the existing row's status: a 'sent' or 'dead'
-- event is not queued again.
SELECT bento_track('sent_event', 'a@example.com', external_id => 'sent-1') AS sent_id \gset
SELECT bento_track('dead_event', 'a@example.com', external_id => 'dead-1') AS dead_id \gset
SELECT bento_track('sending_event', 'a@example.com', external_id => 'sending-1') AS sending_id \gset
UPDATE bento.outbox SET status = 'sent', sent_at = now(), attempts = 1 WHERE id = :sent_id;
UPDATE bento.outbox SET status = 'dead', last_error = 'HTTP 422: invalid', attempts = 1 WHERE id = :dead_id;
UPDATE bento.outbox SET status = 'sending', attempts = 1 WHERE id = :sending_id;
SELECT bento_track('sent_event', 'a@example.com', external_id => 'sent-1') = :sent_id AS same_sent_id;
SELECT bento_track('dead_event', 'a@example.com', external_id => 'dead-1') = :dead_id AS same_dead_id;
SELECT bento_track('sending_event', 'a@example.com', external_id => 'sending-1') = :sending_id AS same_sending_id;
SELECT external_id, status, attempts, last_error
FROM bento.outbox WHERE external_id IN ('sent-1', 'dead-1', 'sending-1') ORDER BY id;
SELECT count(*) AS pending_duplicates
FROM bento.outbox WHERE external_id IN ('sent-1', 'dead-1', 'sending-1') AND status = 'pending';

-- Dedupe across transactions and sessions.
BEGIN;
SELECT bento_track('xact', 'a@example.com', external_id => 'xact-1') AS xact_id \gset
COMMIT;
BEGIN;
SELECT bento_track('xact', 'a@example.com', external_id => 'xact-1') = :xact_id AS same_id;
COMMIT;
\c
SELECT bento_track('xact', 'a@example.com', external_id => 'xact-1') = :xact_id AS same_id_new_session;
SELECT count(*) AS xact_rows FROM bento.outbox WHERE external_id = 'xact-1';

-- Twice in one transaction: the second call sees the first's row.
BEGIN;
SELECT bento_track('same_xact', 'a@example.com', external_id => 'same-xact-1') AS sx_id \gset
SELECT bento_track('same_xact', 'a@example.com', external_id => 'same-xact-1') = :sx_id AS same_id;
COMMIT;
SELECT count(*) AS same_xact_rows FROM bento.outbox WHERE external_id = 'same-xact-1';

-- A rolled-back transaction frees its external_id: the next call queues a
-- new row.
BEGIN;
SELECT bento_track('rb', 'first@example.com', external_id => 'rb-1') AS rb_id \gset
ROLLBACK;
SELECT count(*) AS rb_rows_after_rollback FROM bento.outbox WHERE external_id = 'rb-1';
SELECT bento_track('rb', 'second@example.com', external_id => 'rb-1') AS rb_id2 \gset
SELECT :rb_id2 <> :rb_id AS new_id;
SELECT email FROM bento.outbox WHERE external_id = 'rb-1';

-- The same with a rolled-back savepoint, then reuse in the same transaction.
BEGIN;
SAVEPOINT s;
SELECT bento_track('sp', 'first@example.com', external_id => 'sp-1') AS sp_id \gset
ROLLBACK TO SAVEPOINT s;
SELECT bento_track('sp', 'second@example.com', external_id => 'sp-1') AS sp_id2 \gset
SELECT :sp_id2 <> :sp_id AS new_id;
COMMIT;
SELECT email FROM bento.outbox WHERE external_id = 'sp-1';

-- The key outlives its event: deleting the outbox row (as retention does)
-- does not free the external_id; it lives in bento.dedupe.
SELECT external_id, outbox_id = :dead_id AS points_at_event FROM bento.dedupe WHERE external_id = 'dead-1';
DELETE FROM bento.outbox WHERE external_id = 'dead-1';
SELECT bento_track('dead_event', 'a@example.com', external_id => 'dead-1') = :dead_id AS same_id_after_delete;
SELECT count(*) AS rows_for_dead_1 FROM bento.outbox WHERE external_id = 'dead-1';
-- Deleting the key frees it.
DELETE FROM bento.dedupe WHERE external_id = 'dead-1';
SELECT bento_track('dead_event', 'a@example.com', external_id => 'dead-1') <> :dead_id AS new_id;
SELECT status, attempts FROM bento.outbox WHERE external_id = 'dead-1';

-- A validation error is raised even when the external_id is already
-- queued: the duplicate is checked only for valid events.
SELECT bento_track('$purchase', 'not-an-email', external_id => 'order-1');

-- Overview: exactly one row per non-NULL external_id, and one key per row.
SELECT count(*) AS with_external_id, count(DISTINCT external_id) AS distinct_external_ids
FROM bento.outbox WHERE external_id IS NOT NULL;
SELECT count(*) AS keys_without_their_event
FROM bento.dedupe d WHERE NOT EXISTS (SELECT 1 FROM bento.outbox o WHERE o.id = d.outbox_id);
SELECT count(*) AS events_without_their_key
FROM bento.outbox o WHERE o.external_id IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM bento.dedupe d WHERE d.outbox_id = o.id AND d.external_id = o.external_id);

DROP EXTENSION bento;
