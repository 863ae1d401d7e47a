--
-- Watches: bento_watch(), bento_unwatch(), bento.watched and the trigger
-- function bento.watch_trigger(): what watched writes queue, deduplication,
-- invalid rows (skipped or raised), odd identifiers, privileges, search_path
-- safety, hand-written triggers, and every error.
--
-- The test instance has no credentials: the worker never claims anything.
--
CREATE EXTENSION bento;

-- What was queued since the last look, then forget it.
CREATE FUNCTION pg_temp.queued()
RETURNS TABLE (type text, email text, fields jsonb, details jsonb, external_id text)
LANGUAGE sql AS $$
	SELECT o.type, o.email, o.fields, o.details, o.external_id FROM bento.outbox o ORDER BY o.id
$$;
CREATE PROCEDURE pg_temp.forget() LANGUAGE sql AS $$
	DELETE FROM bento.outbox; DELETE FROM bento.dedupe; DELETE FROM bento.watch_skips
$$;

--------------------------------------------------------------------------
-- Story 1: when an order is inserted, send $purchase.
--------------------------------------------------------------------------
CREATE TABLE orders (
	id			integer PRIMARY KEY,
	email		text,
	total		numeric(10,2) NOT NULL,
	currency	text NOT NULL DEFAULT 'EUR',
	placed_at	timestamptz NOT NULL DEFAULT '2026-11-30 13:05:00+00'
);
SELECT bento_watch('orders', '$purchase', 'email',
				   details => $$jsonb_build_object('value', jsonb_build_object('amount', total, 'currency', currency), 'order_id', id)$$,
				   occurred_at => 'placed_at');
SELECT table_name, watch, operation, event_type, email, fields, details, condition, external_id,
	   occurred_at, on_invalid, enabled, trigger_name, skipped_events, description
FROM bento.watched;
INSERT INTO orders (id, email, total) VALUES (1, 'ada@example.com', 49.50), (2, 'bob@example.com', 12);
-- The external_id is the default one (event type, table, operation, key),
-- and it became details.unique.key.
SELECT * FROM pg_temp.queued();
-- occurred_at came from the row, and the events wait for the worker.
SELECT occurred_at = '2026-11-30 13:05:00+00' AS from_placed_at, status, attempts FROM bento.outbox;
-- A replayed write (the order deleted and inserted again) is not sent twice.
DELETE FROM orders WHERE id = 1;
INSERT INTO orders (id, email, total) VALUES (1, 'ada@example.com', 49.50);
SELECT count(*) AS purchases FROM bento.outbox;
-- Rolled back: nothing queued, and the key is free again.
BEGIN;
INSERT INTO orders (id, email, total) VALUES (3, 'cy@example.com', 5);
ROLLBACK;
SELECT count(*) AS purchases FROM bento.outbox;
INSERT INTO orders (id, email, total) VALUES (3, 'cy@example.com', 5);
SELECT count(*) AS purchases FROM bento.outbox;
-- Details that carry their own unique.key keep it.
SELECT bento_unwatch('orders', '$purchase');
SELECT bento_watch('orders', '$purchase', 'email',
				   details => $$jsonb_build_object('unique', jsonb_build_object('key', 'order-' || id),
												   'value', jsonb_build_object('amount', total, 'currency', currency))$$);
INSERT INTO orders (id, email, total) VALUES (4, 'dee@example.com', 1.25);
SELECT * FROM pg_temp.queued() WHERE external_id LIKE '%:4';
CALL pg_temp.forget();

--------------------------------------------------------------------------
-- Story 2: when a deal's status becomes won, send crm.deal_won.
--------------------------------------------------------------------------
CREATE TABLE deals (id integer PRIMARY KEY, owner_email text NOT NULL, status text NOT NULL,
					amount integer NOT NULL);
SELECT bento_watch('deals', 'crm.deal_won', 'owner_email', operations => '{UPDATE}',
				   condition => $$old.status IS DISTINCT FROM new.status AND status = 'won'$$,
				   details => $$jsonb_build_object('deal_id', id, 'value', jsonb_build_object('amount', amount, 'currency', 'USD'))$$,
				   external_id => $$'deal-' || id || '-won'$$);
INSERT INTO deals VALUES (1, 'sam@example.com', 'open', 3000), (2, 'sam@example.com', 'open', 10),
						 (3, 'kim@example.com', 'lost', 99);
UPDATE deals SET status = 'won' WHERE id IN (1, 3);
UPDATE deals SET amount = amount + 1;			-- status unchanged: nothing
UPDATE deals SET status = 'won' WHERE id = 1;	-- already won: nothing
UPDATE deals SET status = 'lost' WHERE id = 1;
UPDATE deals SET status = 'won' WHERE id = 1;	-- won again: same external_id, not sent twice
SELECT * FROM pg_temp.queued();
CALL pg_temp.forget();

--------------------------------------------------------------------------
-- Story 3: when a user signs up, send $subscribe with name fields.
--------------------------------------------------------------------------
CREATE TABLE users (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, email text NOT NULL,
					full_name text, plan text, tags text[]);
SELECT bento_watch('users', '$subscribe', 'lower(email)',
				   fields => $${"first_name": "split_part(full_name, ' ', 1)",
								"last_name": "substring(full_name from ' (.*)$')",
								"plan": "plan", "tags": "tags"}$$,
				   details => 'NULL', external_id => $$'signup-' || id$$);
INSERT INTO users (email, full_name, plan, tags) VALUES
	('Ada@Example.com', 'Ada Lovelace', 'growth', '{vip,beta}'),
	('bob@example.com', NULL, NULL, NULL), ('cy@example.com', 'Cy', NULL, '{}');
-- Fields whose value is NULL are left out (an empty set of fields is NULL).
SELECT * FROM pg_temp.queued();
-- A list of columns is a mapping to fields of the same name.
SELECT bento_watch('users', '$update_fields', 'email', operations => '{update}',
				   fields => '["plan", "full_name"]', details => 'NULL', external_id => 'NULL');
UPDATE users SET plan = 'scale' WHERE id = 1;
UPDATE users SET plan = 'scale' WHERE id = 1;	-- nothing changed: no event
SELECT type, email, fields, details, external_id FROM pg_temp.queued() WHERE type = '$update_fields';
CALL pg_temp.forget();

--------------------------------------------------------------------------
-- Defaults: details and external_id for each operation.
--------------------------------------------------------------------------
CREATE TABLE items (sku text, region integer, email text, qty integer, note json,
					PRIMARY KEY (sku, region));
ALTER TABLE items ADD COLUMN dropped integer;
ALTER TABLE items DROP COLUMN dropped;
SELECT bento_watch('items', 'item.changed', 'email', operations => '{insert,update,delete}');
SELECT trigger_name, operation, description FROM bento.watched WHERE table_name = 'items'::regclass
ORDER BY trigger_name;
INSERT INTO items VALUES ('A-1', 7, 'ops@example.com', 1, '{"x": [1, 2]}');
UPDATE items SET qty = 2, note = '{"x": [3]}';
UPDATE items SET qty = 2;					-- no change: no event
-- A key that changes: the old row cannot be paired, so it reads as NULL.
UPDATE items SET region = 8;
DELETE FROM items;
SELECT * FROM pg_temp.queued();
CALL pg_temp.forget();
-- The table changes: the watch follows (new column, new schema name).
ALTER TABLE items ADD COLUMN color text NOT NULL DEFAULT 'red';
CREATE SCHEMA stock;
ALTER TABLE items SET SCHEMA stock;
ALTER SCHEMA stock RENAME TO warehouse;
INSERT INTO warehouse.items VALUES ('B-2', 1, 'ops@example.com', 5, NULL);
SELECT * FROM pg_temp.queued();
-- A column the watch names is renamed: writes fail until the watch is made again.
ALTER TABLE warehouse.items RENAME COLUMN email TO contact;
INSERT INTO warehouse.items VALUES ('C-3', 1, 'ops@example.com', 5, NULL);
ALTER TABLE warehouse.items RENAME COLUMN contact TO email;
ALTER TABLE warehouse.items SET SCHEMA public;
DROP SCHEMA warehouse;
CALL pg_temp.forget();
-- Without a key: INSERT and DELETE events have no external_id; UPDATE
-- cannot be watched.
CREATE TABLE logbook (email text, line text);
SELECT bento_watch('logbook', 'log.line', 'email', operations => '{INSERT, delete}');
INSERT INTO logbook VALUES ('ops@example.com', 'one'), ('ops@example.com', 'one');
SELECT * FROM pg_temp.queued();
SELECT bento_watch('logbook', 'log.edit', 'email', operations => '{update}');
SELECT description FROM bento.watched WHERE table_name = 'logbook'::regclass ORDER BY trigger_name;
CALL pg_temp.forget();

--------------------------------------------------------------------------
-- Deduplication across and within statements.
--------------------------------------------------------------------------
CREATE TABLE signups (id integer PRIMARY KEY, email text, campaign text);
SELECT bento_watch('signups', 'campaign.joined', 'email', external_id => $$email || ':' || campaign$$,
				   details => $$jsonb_build_object('id', id)$$);
-- Rows 1 and 3 share an external_id: the first row wins.
INSERT INTO signups VALUES (1, 'a@example.com', 'spring'), (2, 'b@example.com', 'spring'),
						   (3, 'a@example.com', 'spring'), (4, 'a@example.com', 'fall');
-- A key queued by bento_track is a key queued for a watch, and the other way round.
SELECT bento_track('campaign.joined', 'c@example.com', external_id => 'c@example.com:spring') > 0 AS tracked;
INSERT INTO signups VALUES (5, 'c@example.com', 'spring'), (6, 'd@example.com', 'spring');
SELECT bento_track('campaign.joined', 'x@example.com', external_id => 'd@example.com:spring')
	= (SELECT id FROM bento.outbox WHERE external_id = 'd@example.com:spring') AS same_event;
SELECT type, email, details, external_id FROM pg_temp.queued();
-- NULL external_ids never dedupe.
SELECT bento_unwatch('signups');
SELECT bento_watch('signups', 'campaign.row', 'email', external_id => 'NULL', details => 'NULL');
INSERT INTO signups VALUES (7, 'e@example.com', 'x'), (8, 'e@example.com', 'x');
DELETE FROM signups WHERE id IN (7, 8);
INSERT INTO signups VALUES (7, 'e@example.com', 'x');
SELECT count(*) AS events_without_external_id FROM bento.outbox WHERE type = 'campaign.row' AND external_id IS NULL;
CALL pg_temp.forget();

--------------------------------------------------------------------------
-- Invalid events: skipped and counted (default), or raised.
--------------------------------------------------------------------------
CREATE TABLE contacts (id integer PRIMARY KEY, email text, score integer);
SELECT bento_watch('contacts', 'contact.added', 'email', fields => '{"score": "score"}');
INSERT INTO contacts VALUES (1, 'ok@example.com', 1), (2, NULL, 2), (3, 'not-an-email', 3),
							(4, 'ok2@example.com', 4);
-- The rows were written; two events were queued.
SELECT count(*) AS contacts FROM contacts;
SELECT email, fields FROM pg_temp.queued();
INSERT INTO contacts VALUES (5, 'a@@example.com', 5);
SELECT skipped_events, last_skip_error FROM bento.watched WHERE table_name = 'contacts'::regclass;
SELECT skipped, events, first_error FROM bento.watch_skips ORDER BY skipped_at, skipped;
-- raise: the statement fails with bento_track's error and SQLSTATE.
SELECT bento_unwatch('contacts');
SELECT bento_watch('contacts', 'contact.added', 'email', on_invalid => 'raise');
INSERT INTO contacts VALUES (6, 'fine@example.com', 6), (7, NULL, 7);
DO $$
BEGIN
	INSERT INTO contacts VALUES (8, 'x y@example.com', 8);
EXCEPTION WHEN invalid_parameter_value THEN
	RAISE NOTICE 'caught %: %', SQLSTATE, SQLERRM;
END
$$;
SELECT count(*) AS contacts FROM contacts;
SELECT count(*) AS queued FROM bento.outbox;
-- An expression that fails fails the statement, whatever on_invalid says.
SELECT bento_unwatch('contacts');
SELECT bento_watch('contacts', 'contact.added', 'email', details => $$jsonb_build_object('ratio', 100 / score)$$);
INSERT INTO contacts VALUES (10, 'ten@example.com', 0);
-- A field Bento cannot take (not flat) is refused like any other problem.
SELECT bento_unwatch('contacts');
SELECT bento_watch('contacts', 'contact.added', 'email', fields => $${"meta": "jsonb_build_object('score', score)"}$$);
INSERT INTO contacts VALUES (9, 'nine@example.com', 9);
CALL pg_temp.forget();

--------------------------------------------------------------------------
-- Odd identifiers: spaces, quotes, reserved words, mixed case.
--------------------------------------------------------------------------
CREATE SCHEMA "Sales & ""Co""";
CREATE TABLE "Sales & ""Co"""."Order Lines" (
	"select"		integer,
	"Line No"		integer,
	"E-Mail"		text,
	"user"			text,
	"from"			text,
	PRIMARY KEY ("select", "Line No")
);
SELECT bento_watch('"Sales & ""Co"""."Order Lines"', 'line.added', 'E-Mail',
				   fields => '{"user": "user", "from": "from", "first name": "initcap(\"user\")"}',
				   condition => $$"from" <> 'test'$$,
				   name => 'it''s "odd"');
INSERT INTO "Sales & ""Co"""."Order Lines" VALUES (1, 1, 'q@example.com', 'quinn', 'web'),
												  (1, 2, 'q@example.com', 'quinn', 'test');
SELECT * FROM pg_temp.queued();
SELECT table_name, watch, trigger_name FROM bento.watched WHERE event_type = 'line.added';
SELECT bento_watch('"Sales & ""Co"""."Order Lines"', 'line.added', 'E-Mail', name => 'it''s "odd"');
SELECT bento_unwatch('"Sales & ""Co"""."Order Lines"', 'it''s "odd"');
DROP SCHEMA "Sales & ""Co""" CASCADE;
CALL pg_temp.forget();

--------------------------------------------------------------------------
-- Expressions: lookups in other tables, old and new, a partitioned table.
--------------------------------------------------------------------------
CREATE TABLE accounts (id integer PRIMARY KEY, billing_email text);
CREATE TABLE invoices (id integer, account_id integer, amount integer, paid boolean,
					   PRIMARY KEY (id, account_id)) PARTITION BY HASH (account_id);
CREATE TABLE invoices_0 PARTITION OF invoices FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE invoices_1 PARTITION OF invoices FOR VALUES WITH (MODULUS 2, REMAINDER 1);
INSERT INTO accounts VALUES (1, 'billing@one.example'), (2, 'billing@two.example');
SELECT bento_watch('invoices', 'invoice.paid', '(SELECT a.billing_email FROM public.accounts a WHERE a.id = account_id)',
				   operations => '{update}', condition => 'paid AND NOT old.paid',
				   details => $$jsonb_build_object('invoice', id, 'was', old.amount, 'now', new.amount)$$);
INSERT INTO invoices SELECT g, 1 + g % 2, g * 10, false FROM generate_series(1, 4) g;
UPDATE invoices SET paid = true, amount = amount + 1 WHERE id <= 3;
SELECT email, details, external_id ~ '^invoice.paid:public.invoices:update:\[[0-9]+, [0-9]\]:[0-9a-f]{32}$' AS default_id
FROM pg_temp.queued();
-- Unqualified tables are not found: the expressions run with search_path
-- pg_catalog, pg_temp.
SELECT bento_watch('invoices', 'invoice.new', '(SELECT billing_email FROM accounts WHERE id = account_id)');
CALL pg_temp.forget();

--------------------------------------------------------------------------
-- A bulk write: set-based, with more rows than the saved plans are for.
--------------------------------------------------------------------------
CREATE TABLE bulk (id integer PRIMARY KEY, email text, grp integer);
SELECT bento_watch('bulk', 'bulk.row', 'email', details => $$jsonb_build_object('grp', grp)$$,
				   operations => '{insert,update}', condition => 'grp IS DISTINCT FROM 0');
INSERT INTO bulk SELECT g, CASE WHEN g % 1000 = 0 THEN NULL ELSE 'u' || g || '@example.com' END, g % 3
FROM generate_series(1, 5000) g;
UPDATE bulk SET grp = grp + 1 WHERE id <= 3000;
SELECT count(*) FILTER (WHERE external_id LIKE '%:insert:%') AS inserts,
	   count(*) FILTER (WHERE external_id LIKE '%:update:%') AS updates,
	   count(DISTINCT external_id) AS distinct_ids,
	   min(id) < max(id) AS ordered
FROM bento.outbox;
-- Events are queued in the order of the rows.
SELECT bool_and(ok) AS in_row_order
FROM (SELECT (details ->> 'grp') IS NOT NULL AND
			 split_part(external_id, ':', 4)::int > coalesce(lag(split_part(external_id, ':', 4)::int)
				 OVER (PARTITION BY split_part(external_id, ':', 3) ORDER BY id), 0) AS ok
	  FROM bento.outbox) s;
SELECT skipped_events FROM bento.watched WHERE table_name = 'bulk'::regclass ORDER BY trigger_name;
DROP TABLE bulk;
CALL pg_temp.forget();

--------------------------------------------------------------------------
-- Hand-written triggers.
--------------------------------------------------------------------------
CREATE TABLE tickets (id integer PRIMARY KEY, requester text, subject text);
CREATE TRIGGER ticket_opened AFTER INSERT ON tickets
	REFERENCING NEW TABLE AS opened
	FOR EACH STATEMENT EXECUTE FUNCTION bento.watch_trigger('support.ticket_opened', 'requester');
CREATE TRIGGER ticket_closed AFTER DELETE ON tickets
	REFERENCING OLD TABLE AS closed
	FOR EACH STATEMENT EXECUTE FUNCTION bento.watch_trigger('support.ticket_closed', 'requester',
		'{"fields": {"last_subject": "subject"}, "details": "NULL", "on_invalid": "raise"}');
SELECT bento.check_watch(oid) FROM pg_trigger WHERE tgname IN ('ticket_opened', 'ticket_closed');
INSERT INTO tickets VALUES (1, 'tess@example.com', 'Help');
DELETE FROM tickets;
SELECT * FROM pg_temp.queued();
SELECT watch, operation, event_type, on_invalid, description FROM bento.watched
WHERE table_name = 'tickets'::regclass ORDER BY trigger_name;
ALTER TABLE tickets DISABLE TRIGGER ticket_opened;
SELECT enabled, left(description, 40) AS description FROM bento.watched WHERE trigger_name = 'ticket_opened';
-- bento_unwatch knows them by trigger name.
SELECT bento_unwatch('tickets', 'ticket_opened');
SELECT bento_unwatch('tickets');
CALL pg_temp.forget();

-- Misdeclared triggers: each fails when it fires, and bento.check_watch says so first.
CREATE TABLE misc (id integer PRIMARY KEY, email text);
CREATE TRIGGER by_row AFTER INSERT ON misc FOR EACH ROW EXECUTE FUNCTION bento.watch_trigger('e', 'email');
INSERT INTO misc VALUES (1, 'a@example.com');
SELECT bento.check_watch(oid) FROM pg_trigger WHERE tgname = 'by_row';
SELECT description FROM bento.watched WHERE trigger_name = 'by_row';
DROP TRIGGER by_row ON misc;
CREATE TRIGGER before_stmt BEFORE INSERT ON misc FOR EACH STATEMENT EXECUTE FUNCTION bento.watch_trigger('e', 'email');
INSERT INTO misc VALUES (2, 'a@example.com');
DROP TRIGGER before_stmt ON misc;
CREATE TRIGGER on_truncate AFTER TRUNCATE ON misc FOR EACH STATEMENT EXECUTE FUNCTION bento.watch_trigger('e', 'email');
TRUNCATE misc;
SELECT bento.check_watch(oid) FROM pg_trigger WHERE tgname = 'on_truncate';
DROP TRIGGER on_truncate ON misc;
CREATE TRIGGER no_table AFTER INSERT ON misc FOR EACH STATEMENT EXECUTE FUNCTION bento.watch_trigger('e', 'email');
INSERT INTO misc VALUES (3, 'a@example.com');
DROP TRIGGER no_table ON misc;
CREATE TRIGGER update_new_only AFTER UPDATE ON misc REFERENCING NEW TABLE AS n
	FOR EACH STATEMENT EXECUTE FUNCTION bento.watch_trigger('e', 'email');
SELECT bento.check_watch(oid) FROM pg_trigger WHERE tgname = 'update_new_only';
DROP TRIGGER update_new_only ON misc;
CREATE TRIGGER no_args AFTER INSERT ON misc REFERENCING NEW TABLE AS n
	FOR EACH STATEMENT EXECUTE FUNCTION bento.watch_trigger();
INSERT INTO misc VALUES (4, 'a@example.com');
SELECT description FROM bento.watched WHERE trigger_name = 'no_args';
DROP TRIGGER no_args ON misc;
CREATE TRIGGER bad AFTER INSERT ON misc REFERENCING NEW TABLE AS n
	FOR EACH STATEMENT EXECUTE FUNCTION bento.watch_trigger('e', 'email', '{"fields": ');
INSERT INTO misc VALUES (5, 'a@example.com');
SELECT description FROM bento.watched WHERE trigger_name = 'bad';
DROP TRIGGER bad ON misc;
CREATE TRIGGER bad AFTER INSERT ON misc REFERENCING NEW TABLE AS n
	FOR EACH STATEMENT EXECUTE FUNCTION bento.watch_trigger('e', 'email', '[]');
INSERT INTO misc VALUES (5, 'a@example.com');
DROP TRIGGER bad ON misc;
CREATE TRIGGER bad AFTER INSERT ON misc REFERENCING NEW TABLE AS n
	FOR EACH STATEMENT EXECUTE FUNCTION bento.watch_trigger('e', 'email', '{"when": "true", "detail": "x"}');
INSERT INTO misc VALUES (5, 'a@example.com');
DROP TRIGGER bad ON misc;
CREATE TRIGGER bad AFTER INSERT ON misc REFERENCING NEW TABLE AS n
	FOR EACH STATEMENT EXECUTE FUNCTION bento.watch_trigger('e', 'email', '{"condition": true}');
INSERT INTO misc VALUES (5, 'a@example.com');
DROP TRIGGER bad ON misc;
CREATE TRIGGER bad AFTER INSERT ON misc REFERENCING NEW TABLE AS n
	FOR EACH STATEMENT EXECUTE FUNCTION bento.watch_trigger('', 'email');
INSERT INTO misc VALUES (5, 'a@example.com');
DROP TRIGGER bad ON misc;
CREATE TRIGGER bad AFTER INSERT ON misc REFERENCING NEW TABLE AS n
	FOR EACH STATEMENT EXECUTE FUNCTION bento.watch_trigger('e', '');
INSERT INTO misc VALUES (5, 'a@example.com');
DROP TRIGGER bad ON misc;
SELECT count(*) AS misc_rows FROM misc;
SELECT bento.watch_trigger();
SELECT bento.check_watch(0);
CREATE TRIGGER other AFTER INSERT ON misc FOR EACH STATEMENT EXECUTE FUNCTION suppress_redundant_updates_trigger();
SELECT bento.check_watch(oid) FROM pg_trigger WHERE tgname = 'other';
DROP TRIGGER other ON misc;
CALL pg_temp.forget();

--------------------------------------------------------------------------
-- Every error of bento_watch and bento_unwatch.
--------------------------------------------------------------------------
\set SHOW_CONTEXT never
SELECT bento_watch(NULL, 'e', 'email');
SELECT bento_watch('misc', NULL, 'email');
SELECT bento_watch('misc', 'e', NULL);
SELECT bento_watch('misc', '', 'email');
SELECT bento_watch('misc', 'e', '');
SELECT bento_watch('misc', 'e', 'email', operations => '{}');
SELECT bento_watch('misc', 'e', 'email', operations => NULL);
SELECT bento_watch('misc', 'e', 'email', operations => '{insert,NULL}');
SELECT bento_watch('misc', 'e', 'email', operations => '{insert,truncate,upsert}');
SELECT bento_watch('misc', 'e', 'email', on_invalid => 'ignore');
SELECT bento_watch('misc', 'e', 'email', on_invalid => NULL);
SELECT bento_watch('misc', 'e', 'email', name => '');
SELECT bento_watch('misc', 'e', 'email', name => repeat('x', 52));
CREATE VIEW misc_view AS SELECT * FROM misc;
SELECT bento_watch('misc_view', 'e', 'email');
SELECT bento_watch('bento.outbox', 'e', 'email');
SELECT bento_watch('pg_class', 'e', 'relname');
SELECT bento_watch('no_such_table', 'e', 'email');
SELECT bento_watch(12345, 'e', 'email');
-- Expressions: not one expression, unknown column, wrong type.
SELECT bento_watch('misc', 'e', 'email) AS email, (1');
SELECT bento_watch('misc', 'e', 'email) IS NULL OR (true');
SELECT bento_watch('misc', 'e', 'email FROM misc');
SELECT bento_watch('misc', 'e', 'email; DROP TABLE misc');
SELECT bento_watch('misc', 'e', 'email /*');
SELECT bento_watch('misc', 'e', '''unterminated');
SELECT bento_watch('misc', 'e', 'em ail');
SELECT bento_watch('misc', 'e', '   ');
SELECT bento_watch('misc', 'e', 'mail');
SELECT bento_watch('misc', 'e', 'email', condition => 'id');
SELECT bento_watch('misc', 'e', 'email', details => 'id + 1');
SELECT bento_watch('misc', 'e', 'email', occurred_at => 'id');
SELECT bento_watch('misc', 'e', 'email', condition => 'old.id > 1');
SELECT bento_watch('misc', 'e', 'email', operations => '{delete}', condition => 'new.id > 1');
-- Fields.
SELECT bento_watch('misc', 'e', 'email', fields => '"id"');
SELECT bento_watch('misc', 'e', 'email', fields => '{"": "id"}');
SELECT bento_watch('misc', 'e', 'email', fields => '{"n": 1}');
SELECT bento_watch('misc', 'e', 'email', fields => '["id", "nope"]');
SELECT bento_watch('misc', 'e', 'email', fields => '[1]');
SELECT bento_watch('misc', 'e', 'email', fields => '{"n": "id +"}');
-- The same watch twice; a trigger of that name already there.
SELECT bento_watch('misc', 'e', 'email');
SELECT bento_watch('misc', 'e', 'email', operations => '{delete}');
SELECT bento_watch('misc', 'f', 'email', name => 'e');
CREATE TRIGGER bento_g_insert AFTER INSERT ON misc FOR EACH STATEMENT EXECUTE FUNCTION suppress_redundant_updates_trigger();
SELECT bento_watch('misc', 'g', 'email');
-- Nothing half-made is left behind by a failed bento_watch.
SELECT trigger_name FROM bento.watched WHERE table_name = 'misc'::regclass ORDER BY 1;
SELECT bento_unwatch('misc', 'nope');
SELECT bento_unwatch('orders', 'e');
SELECT bento_unwatch(NULL);
SELECT bento_unwatch('misc_view');
DROP TRIGGER bento_g_insert ON misc;
\set SHOW_CONTEXT errors

--------------------------------------------------------------------------
-- Privileges.  An application role that may only write to a watched table
-- still queues events; it cannot see or change bento's tables, nor create
-- or remove watches, nor call the trigger function from its own triggers.
--------------------------------------------------------------------------
CREATE ROLE regress_bento_owner;
CREATE ROLE regress_bento_app;
CREATE SCHEMA app AUTHORIZATION regress_bento_owner;
SET ROLE regress_bento_owner;
CREATE TABLE app.members (id integer PRIMARY KEY, email text, nick text);
CREATE FUNCTION app.who() RETURNS text LANGUAGE sql AS 'SELECT current_user::text';
GRANT USAGE ON SCHEMA app TO regress_bento_app;
GRANT INSERT, UPDATE, DELETE, SELECT ON app.members TO regress_bento_app;
RESET ROLE;
-- Expressions run as the table's owner, whoever writes.
SELECT bento_watch('app.members', 'member.joined', 'lower(email)',
				   fields => '{"nick": "nick", "evaluated_by": "app.who()"}', details => 'NULL');
SET ROLE regress_bento_app;
SET search_path = app, public;
INSERT INTO members VALUES (1, 'm1@example.com', 'em');
SELECT count(*) FROM bento.outbox;
DELETE FROM bento.outbox;
SELECT * FROM bento.watched;
SELECT bento_watch('members', 'x', 'email');
SELECT bento_unwatch('members');
SELECT bento_track('e', 'sneaky@example.com') > 0 AS may_track;
RESET ROLE;
RESET search_path;
SELECT type, email, fields FROM pg_temp.queued();
-- The table's owner may not create watch triggers by hand either, even
-- with USAGE on schema bento.
SET ROLE regress_bento_owner;
CREATE TRIGGER mine AFTER INSERT ON app.members REFERENCING NEW TABLE AS n
	FOR EACH STATEMENT EXECUTE FUNCTION bento.watch_trigger('x', 'email');
RESET ROLE;
GRANT USAGE ON SCHEMA bento TO regress_bento_owner;
SET ROLE regress_bento_owner;
CREATE TRIGGER mine AFTER INSERT ON app.members REFERENCING NEW TABLE AS n
	FOR EACH STATEMENT EXECUTE FUNCTION bento.watch_trigger('x', 'email');
RESET ROLE;
REVOKE USAGE ON SCHEMA bento FROM regress_bento_owner;
-- A role that was granted EXECUTE on bento_watch still needs to be a superuser.
GRANT EXECUTE ON FUNCTION bento_watch(regclass, text, text, text[], jsonb, text, text, text, text, text, text)
	TO regress_bento_owner;
SET ROLE regress_bento_owner;
SELECT bento_watch('app.members', 'x', 'email');
RESET ROLE;
-- Expressions cannot use what the table's owner may not: checked when the watch is made.
CREATE TABLE secrets (id integer, email text);
SELECT bento_watch('app.members', 'x', '(SELECT s.email FROM public.secrets s LIMIT 1)');
CALL pg_temp.forget();

--------------------------------------------------------------------------
-- search_path tricks by the writing role change nothing.
--------------------------------------------------------------------------
CREATE SCHEMA trap AUTHORIZATION regress_bento_app;
SET ROLE regress_bento_app;
CREATE FUNCTION trap.to_jsonb(anyelement) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{"trapped": true}'::jsonb $$;
CREATE FUNCTION trap.jsonb_build_object(text, text, text, text) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{"trapped": true}'::jsonb $$;
CREATE FUNCTION trap.jsonb_strip_nulls(jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{"trapped": true}'::jsonb $$;
CREATE FUNCTION trap.now() RETURNS timestamptz LANGUAGE sql AS $$ SELECT '1999-01-01'::timestamptz $$;
CREATE FUNCTION trap.nextval(regclass) RETURNS bigint LANGUAGE sql AS $$ SELECT -1::bigint $$;
CREATE FUNCTION trap.lower(text) RETURNS text LANGUAGE sql AS $$ SELECT 'trapped@example.com' $$;
CREATE TABLE trap.outbox (LIKE app.members);
CREATE TEMP TABLE bento_new (id integer, email text, nick text);
INSERT INTO bento_new VALUES (666, 'temp@example.com', 'temp');
SET search_path = trap, app, pg_temp, pg_catalog;
INSERT INTO members VALUES (2, 'M2@example.com', 'em2');
DROP TABLE pg_temp.bento_new;
RESET search_path;
RESET ROLE;
SELECT o.type, o.email, o.fields, o.occurred_at > '2000-01-01' AS not_trapped, o.id > 0 AS real_id
FROM bento.outbox o ORDER BY o.id;
CALL pg_temp.forget();

--------------------------------------------------------------------------
-- Dropping a watched table removes its watch; dropping the extension needs
-- CASCADE, which removes every watch trigger and nothing else.
--------------------------------------------------------------------------
SELECT count(*) AS watches_on_orders FROM bento.watched WHERE table_name = 'orders'::regclass;
DROP TABLE orders;
SELECT count(*) AS watches FROM bento.watched;
\set VERBOSITY terse
DROP EXTENSION bento;
DROP EXTENSION bento CASCADE;
SELECT count(*) AS triggers_left FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
WHERE NOT t.tgisinternal AND c.relnamespace <> 'pg_catalog'::regnamespace;
-- The tables work as before.
INSERT INTO deals VALUES (9, 'z@example.com', 'won', 1);
UPDATE deals SET status = 'lost' WHERE id = 9;
SELECT count(*) AS deals FROM deals;

DROP SCHEMA trap CASCADE;
DROP SCHEMA app CASCADE;
DROP VIEW misc_view;
DROP TABLE deals, users, items, logbook, signups, contacts, accounts, invoices, tickets, misc, secrets;
DROP ROLE regress_bento_app;
DROP ROLE regress_bento_owner;
\set VERBOSITY default
