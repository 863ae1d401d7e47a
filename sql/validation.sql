--
-- bento_track() refuses bad events before anything is queued, with a
-- precise message and SQLSTATE; valid edge cases pass.
--
-- After each failing call, ":SQLSTATE" shows the error code psql received.
--
CREATE EXTENSION bento;

--
-- type
--
SELECT bento_track(NULL, 'a@example.com');
\echo :SQLSTATE
SELECT bento_track('', 'a@example.com');
\echo :SQLSTATE

--
-- email
--
SELECT bento_track('signup', NULL);
\echo :SQLSTATE
SELECT bento_track('signup', '');
\echo :SQLSTATE
-- the full message for one bad address
SELECT bento_track('signup', 'no-at-sign.example.com');
\echo :SQLSTATE

-- Every refused address: the SQLSTATE and the reason (errdetail).
CREATE FUNCTION regress_email_error(addr text, OUT code text, OUT message text, OUT detail text)
LANGUAGE plpgsql AS $$
BEGIN
	PERFORM bento_track('signup', addr);
	code := '00000';
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, message = MESSAGE_TEXT,
		detail = PG_EXCEPTION_DETAIL;
END
$$;

SELECT c.label, r.code AS sqlstate, r.detail,
       r.message = format('argument "email" of bento_track is not a valid email address: "%s"', c.addr) AS message_ok
FROM (VALUES
	(1, 'no @', 'user.example.com'),
	(2, 'two @', 'a@b@example.com'),
	(3, 'empty local part', '@example.com'),
	(4, 'empty domain', 'user@'),
	(5, 'no dot in domain', 'user@localhost'),
	(6, 'space inside', 'us er@example.com'),
	(7, 'leading space', ' user@example.com'),
	(8, 'trailing space', 'user@example.com '),
	(9, 'tab', E'user\t@example.com'),
	(10, 'newline', E'user@example.com\n'),
	(11, 'DEL', E'user\x7f@example.com'),
	(12, 'consecutive dots in domain', 'user@example..com'),
	(13, 'domain starts with dot', 'user@.example.com'),
	(14, 'domain ends with dot', 'user@example.com.'),
	(15, 'only a dot as domain', 'user@.'),
	(16, 'angle brackets', 'ada<x>@example.com'),
	(17, 'comma', 'a@example.com,b@example.com'),
	(18, 'quoted local part', '"ada"@example.com'),
	(19, 'address literal', 'ada@[127.0.0.1]'),
	(20, 'backslash', 'a\b@example.com'),
	(21, 'parenthesis comment', 'ada(x)@example.com'),
	(22, 'semicolon', 'ada;@example.com'),
	(23, 'local part of 65 bytes', repeat('a', 65) || '@example.com'),
	(24, 'local part of 33 two-byte characters', repeat('é', 33) || '@example.com'),
	(25, 'address of 255 bytes',
	 repeat('a', 64) || '@' || repeat('b', 63) || '.' || repeat('c', 63) || '.' || repeat('d', 62)),
	(26, 'local part starts with dot', '.ada@example.com'),
	(27, 'local part ends with dot', 'ada.@example.com'),
	(28, 'consecutive dots in local part', 'a..b@example.com'),
	(29, 'domain label starts with hyphen', 'ada@-example.com'),
	(30, 'domain label ends with hyphen', 'ada@example-.com'),
	(31, 'last domain label ends with hyphen', 'ada@example.com-'),
	(32, 'domain label of 64 bytes', 'ada@' || repeat('b', 64) || '.com')
) AS c(n, label, addr), LATERAL regress_email_error(c.addr) r
ORDER BY c.n;

-- Boundaries and unusual but valid addresses.
SELECT c.label, r.code AS sqlstate, r.message
FROM (VALUES
	(1, 'plus addressing', 'ada+newsletter@example.com'),
	(2, 'dots in local part', 'ada.lovelace@mail.example.co.uk'),
	(3, 'digits, hyphens, underscores', 'a_1-b@sub-domain.example123.com'),
	(4, 'non-ASCII', 'jürgen@exämple.de'),
	(5, 'upper case', 'ADA@EXAMPLE.COM'),
	(6, 'local part of 64 bytes', repeat('a', 64) || '@example.com'),
	(7, 'address of 254 bytes',
	 repeat('a', 64) || '@' || repeat('b', 63) || '.' || repeat('c', 63) || '.' || repeat('d', 61)),
	(8, 'apostrophe and other atext', $$o'brien!#$%&*/=?^`{|}~@example.com$$),
	(9, 'domain label of 63 bytes', 'ada@' || repeat('b', 63) || '.com'),
	(10, 'hyphen inside a domain label', 'ada@my-example.com')
) AS c(n, label, addr), LATERAL regress_email_error(c.addr) r
ORDER BY c.n;
SELECT count(*) AS valid_addresses_queued FROM bento.outbox;
-- The email is stored as given (no case folding or trimming).
SELECT email FROM bento.outbox WHERE email IN ('ADA@EXAMPLE.COM', 'jürgen@exämple.de') ORDER BY id;
DELETE FROM bento.outbox;

--
-- fields: a flat JSON object
--
SELECT bento_track('signup', 'a@example.com', fields => '[1, 2]');
\echo :SQLSTATE
SELECT bento_track('signup', 'a@example.com', fields => '42');
\echo :SQLSTATE
SELECT bento_track('signup', 'a@example.com', fields => '"a string"');
\echo :SQLSTATE
SELECT bento_track('signup', 'a@example.com', fields => 'null');
\echo :SQLSTATE
SELECT bento_track('signup', 'a@example.com', fields => '{"plan": "pro", "address": {"city": "Paris"}}');
\echo :SQLSTATE
SELECT bento_track('signup', 'a@example.com', fields => '{"tags": ["a", {"b": 1}]}');
\echo :SQLSTATE
SELECT bento_track('signup', 'a@example.com', fields => '{"matrix": [[1, 2], [3, 4]]}');
\echo :SQLSTATE
SELECT bento_track('signup', 'a@example.com', fields => '{"ok": [1, 2], "bad": [1, [2]]}');
\echo :SQLSTATE
SELECT bento_track('signup', 'a@example.com', fields => '{"": "x"}');
\echo :SQLSTATE
SELECT bento_track('signup', 'a@example.com', fields => '{"name": "Ada", "": 1}');
\echo :SQLSTATE

--
-- details: a JSON object; details.value, when present, is
-- {"amount": <number>, "currency": <non-empty string>}
--
SELECT bento_track('$purchase', 'a@example.com', details => '[{"sku": "A"}]');
\echo :SQLSTATE
SELECT bento_track('$purchase', 'a@example.com', details => '"details"');
\echo :SQLSTATE
SELECT bento_track('$purchase', 'a@example.com', details => 'true');
\echo :SQLSTATE
SELECT bento_track('$purchase', 'a@example.com', details => '{"value": {"currency": "USD"}}');
\echo :SQLSTATE
SELECT bento_track('$purchase', 'a@example.com', details => '{"value": {"amount": "10", "currency": "USD"}}');
\echo :SQLSTATE
SELECT bento_track('$purchase', 'a@example.com', details => '{"value": {"amount": null, "currency": "USD"}}');
\echo :SQLSTATE
SELECT bento_track('$purchase', 'a@example.com', details => '{"value": {"amount": 10}}');
\echo :SQLSTATE
SELECT bento_track('$purchase', 'a@example.com', details => '{"value": {"amount": 10, "currency": 840}}');
\echo :SQLSTATE
SELECT bento_track('$purchase', 'a@example.com', details => '{"value": {"amount": 10, "currency": ""}}');
\echo :SQLSTATE
SELECT bento_track('$purchase', 'a@example.com', details => '{"value": 10}');
\echo :SQLSTATE
SELECT bento_track('$purchase', 'a@example.com', details => '{"value": [10, "USD"]}');
\echo :SQLSTATE
SELECT bento_track('$purchase', 'a@example.com', details => '{"value": null}');
\echo :SQLSTATE
SELECT bento_track('$purchase', 'a@example.com', details => '{"value": "10 USD"}');
\echo :SQLSTATE

--
-- external_id and occurred_at
--
SELECT bento_track('signup', 'a@example.com', external_id => '');
\echo :SQLSTATE
-- external_id must fit the deduplication index: at most 1024 bytes
SELECT bento_track('signup', 'a@example.com', external_id => repeat('x', 1025));
\echo :SQLSTATE
SELECT bento_track('signup', 'a@example.com', external_id => repeat('é', 513));
\echo :SQLSTATE
SELECT bento_track('signup', 'a@example.com', external_id => repeat('x', 1024)) > 0 AS external_id_of_1024_bytes_queued;
DELETE FROM bento.outbox;
SELECT bento_track('signup', 'a@example.com', occurred_at => NULL);
\echo :SQLSTATE
SELECT bento_track('signup', 'a@example.com', occurred_at => 'infinity');
\echo :SQLSTATE
SELECT bento_track('signup', 'a@example.com', occurred_at => '-infinity');
\echo :SQLSTATE

--
-- Size: type, email, fields, details and external_id together may take at
-- most 64 kB (65536 bytes).
--
SELECT bento_track('$purchase', 'a@example.com',
                   details => jsonb_build_object('notes', repeat('x', 70000)));
\echo :SQLSTATE
SELECT bento_track('signup', 'a@example.com',
                   fields => jsonb_build_object('bio', repeat('x', 40000)),
                   details => jsonb_build_object('notes', repeat('y', 40000)));
\echo :SQLSTATE
-- Exactly at the limit (13 bytes of email + 65523 bytes of type) is
-- accepted, one byte more is not.
SELECT bento_track(repeat('t', 65523), 'a@example.com') > 0 AS at_limit_accepted;
SELECT bento_track(repeat('t', 65524), 'a@example.com');
\echo :SQLSTATE
-- Multi-byte characters count in bytes.
SELECT bento_track(repeat('é', 32762), 'a@example.com');
\echo :SQLSTATE
SELECT length(type) AS stored_type_length FROM bento.outbox;
DELETE FROM bento.outbox;

-- Nothing was queued by any refused call.
SELECT count(*) AS queued_after_errors FROM bento.outbox;

--
-- Valid edge cases
--
SELECT bento_track('signup', 'a@example.com', fields => '{}') > 0 AS empty_fields_ok;
SELECT bento_track('signup', 'a@example.com', details => '{}') > 0 AS empty_details_ok;
SELECT bento_track('profile', 'ada+tag@example.com',
                   fields => '{"tags": ["a", "b", 3, true, null], "age": 36, "ratio": 0.5,
                               "vip": false, "nickname": null, "empty_list": [],
                               "emoji": "🎉", "name": "Zoë Ŝtraße 東京", "ключ": "значение"}',
                   external_id => 'ünïcode-ëxternal-id') AS edge_id \gset
SELECT email, fields, external_id FROM bento.outbox WHERE id = :edge_id;
SELECT fields->>'name' AS name, fields->'tags' AS tags, jsonb_typeof(fields->'nickname') AS nickname_type
FROM bento.outbox WHERE id = :edge_id;
-- details may nest freely; value's amount may be any JSON number
SELECT bento_track('$purchase', 'a@example.com',
                   details => '{"value": {"amount": 19.99, "currency": "EUR"},
                                "cart": {"items": [{"sku": "A", "qty": 2}, {"sku": "B", "qty": [1, [2]]}]}}') AS nested_id \gset
SELECT details FROM bento.outbox WHERE id = :nested_id;
SELECT bento_track('$refund', 'a@example.com', details => '{"value": {"amount": -5, "currency": "USD"}}') > 0 AS negative_amount_ok;
SELECT bento_track('$purchase', 'a@example.com', details => '{"value": {"amount": 0, "currency": "JPY", "extra": 1}}') > 0 AS zero_amount_ok;
SELECT bento_track('$purchase', 'a@example.com', details => '{"value": {"amount": 1e3, "currency": "USD"}}') > 0 AS exponent_ok;
SELECT bento_track('$purchase', 'a@example.com', details => '{"amount": "free text", "other": null}') > 0 AS no_value_ok;
-- a "value" nested deeper than the top level is not checked
SELECT bento_track('custom', 'a@example.com', details => '{"meta": {"value": 10}}') > 0 AS nested_value_ok;
-- an event type is free text
SELECT bento_track('$custom.event:type/with spaces', 'a@example.com') > 0 AS odd_type_ok;
SELECT count(*) AS valid_edge_cases FROM bento.outbox;

--
-- A failed call inside a transaction that already queued events: caught by
-- a savepoint, nothing queued before it is lost.
--
DELETE FROM bento.outbox;
BEGIN;
SELECT bento_track('step', 'one@example.com') > 0 AS tracked;
SAVEPOINT before_bad;
SELECT bento_track('step', 'not an address');
ROLLBACK TO SAVEPOINT before_bad;
SELECT bento_track('step', 'two@example.com') > 0 AS tracked;
COMMIT;
SELECT email, status FROM bento.outbox WHERE type = 'step' ORDER BY id;

-- The same with an exception block in PL/pgSQL.
DO $$
BEGIN
	PERFORM bento_track('plstep', 'one@example.com');
	BEGIN
		PERFORM bento_track('plstep', 'two@example.com', fields => '{"nested": {"no": 1}}');
	EXCEPTION WHEN invalid_parameter_value THEN
		RAISE NOTICE 'caught %: %', SQLSTATE, SQLERRM;
	END;
	PERFORM bento_track('plstep', 'three@example.com');
END
$$;
SELECT email FROM bento.outbox WHERE type = 'plstep' ORDER BY id;

-- Without a savepoint the failed call aborts the whole transaction, as any
-- error does, and the earlier event goes with it.
BEGIN;
SELECT bento_track('aborted', 'one@example.com') > 0 AS tracked;
SELECT bento_track('aborted', '');
COMMIT;
SELECT count(*) AS aborted_rows FROM bento.outbox WHERE type = 'aborted';

DROP FUNCTION regress_email_error(text);
DROP EXTENSION bento;
