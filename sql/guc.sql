--
-- The bento.* settings: defaults, units, who may read them, how they may be
-- changed, and the checks on bento.api_url.
--
-- The settings exist because bento is in shared_preload_libraries (no
-- CREATE EXTENSION needed).  t/regress.conf sets bento.api_url and
-- bento.database; everything else is at its built-in default.
--
SHOW bento.api_url;
SHOW bento.site_uuid;
SHOW bento.publishable_key;
SHOW bento.secret_key;
SHOW bento.database;
SHOW bento.batch_size;
SHOW bento.max_requests_per_minute;
SHOW bento.request_timeout;
SHOW bento.poll_interval;
SHOW bento.retry_base_delay;
SHOW bento.retry_max_delay;

-- Every setting is reloadable (sighup); the time settings are in ms.
-- bento.secret_key is never listed, not even for a superuser.
SELECT name, setting, unit, context, vartype, min_val, max_val, boot_val, reset_val
FROM pg_settings WHERE name LIKE 'bento.%' ORDER BY name;

-- The prefix is reserved: a misspelt setting is an error, not a placeholder.
SET bento.api_key = 'x';
\echo :SQLSTATE
SHOW bento.no_such_setting;
\echo :SQLSTATE

--
-- bento.secret_key is hidden from ordinary roles.
--
CREATE ROLE regress_bento_guc;
SET ROLE regress_bento_guc;
SHOW bento.secret_key;
\echo :SQLSTATE
SELECT current_setting('bento.secret_key');
SELECT current_setting('bento.secret_key', true);
SELECT count(*) AS secret_in_pg_settings FROM pg_settings WHERE name = 'bento.secret_key';
-- the other settings are readable
SHOW bento.api_url;
SELECT count(*) AS visible_settings FROM pg_settings WHERE name LIKE 'bento.%';
RESET ROLE;
-- Members of pg_read_all_settings can read it (as for any superuser-only
-- setting; see the README).
GRANT pg_read_all_settings TO regress_bento_guc;
SET ROLE regress_bento_guc;
SHOW bento.secret_key;
RESET ROLE;
REVOKE pg_read_all_settings FROM regress_bento_guc;

--
-- Reloadable only: SET, SET LOCAL, set_config, ALTER DATABASE/ROLE SET are
-- refused (so the secret can never land in pg_db_role_setting); ALTER
-- SYSTEM plus a reload is the way.
--
SET bento.batch_size = 5;
\echo :SQLSTATE
BEGIN;
SET LOCAL bento.api_url = 'https://example.com/api/v1';
ROLLBACK;
SELECT set_config('bento.poll_interval', '50ms', false);
ALTER DATABASE contrib_regression SET bento.secret_key = 'not-stored';
ALTER ROLE regress_bento_guc SET bento.secret_key = 'not-stored';
SELECT count(*) AS stored_role_settings FROM pg_db_role_setting
WHERE array_to_string(setconfig, ',') LIKE '%bento.%';
SHOW bento.batch_size;
-- an ordinary role may not ALTER SYSTEM
SET ROLE regress_bento_guc;
ALTER SYSTEM SET bento.batch_size = 10;
\echo :SQLSTATE
RESET ROLE;

--
-- bento.api_url: https:// only, or http:// to a loopback host; never
-- credentials in the URL.  ALTER SYSTEM runs the check.
--
ALTER SYSTEM SET bento.api_url = 'http://example.com/api/v1';
\echo :SQLSTATE
ALTER SYSTEM SET bento.api_url = 'http://localhost.example.com/api';
ALTER SYSTEM SET bento.api_url = 'http://127.0.0.2/api';
ALTER SYSTEM SET bento.api_url = 'ftp://app.bentonow.com/api/v1';
ALTER SYSTEM SET bento.api_url = 'https://user:secret@app.bentonow.com/api/v1';
ALTER SYSTEM SET bento.api_url = 'https://user@app.bentonow.com/api/v1';
ALTER SYSTEM SET bento.api_url = 'http://user:secret@127.0.0.1/api';
-- the host is the part after "@", not before it
ALTER SYSTEM SET bento.api_url = 'http://127.0.0.1@example.com/api';
ALTER SYSTEM SET bento.api_url = '';
ALTER SYSTEM SET bento.api_url = 'app.bentonow.com/api/v1';
ALTER SYSTEM SET bento.api_url = 'https://';
-- nothing was written by the refused commands
SELECT count(*) AS auto_conf_entries FROM pg_file_settings
WHERE sourcefile LIKE '%postgresql.auto.conf';

-- Accepted values.
ALTER SYSTEM SET bento.api_url = 'https://example.com/api/v1';
ALTER SYSTEM SET bento.api_url = 'HTTPS://APP.BENTONOW.COM/api/v1';
ALTER SYSTEM SET bento.api_url = 'http://127.0.0.1:9/api/v1';
ALTER SYSTEM SET bento.api_url = 'http://[::1]:1/api';
ALTER SYSTEM SET bento.api_url = 'http://localhost:1/api';
SELECT name, setting, error FROM pg_file_settings
WHERE sourcefile LIKE '%postgresql.auto.conf' ORDER BY seqno;

--
-- Integer ranges and units.
--
ALTER SYSTEM SET bento.batch_size = 0;
ALTER SYSTEM SET bento.batch_size = 1001;
ALTER SYSTEM SET bento.batch_size = 1;
ALTER SYSTEM SET bento.batch_size = 1000;
ALTER SYSTEM SET bento.max_requests_per_minute = -1;
ALTER SYSTEM SET bento.max_requests_per_minute = 0;
-- time settings take units; a bare number is in milliseconds
ALTER SYSTEM SET bento.request_timeout = 5;
\echo :SQLSTATE
ALTER SYSTEM SET bento.request_timeout = '50ms';
ALTER SYSTEM SET bento.request_timeout = '11min';
ALTER SYSTEM SET bento.request_timeout = '1h';
ALTER SYSTEM SET bento.request_timeout = 'soon';
ALTER SYSTEM SET bento.request_timeout = '100ms';
ALTER SYSTEM SET bento.request_timeout = '10min';
ALTER SYSTEM SET bento.request_timeout = '1.5s';
ALTER SYSTEM SET bento.request_timeout = 2000;
ALTER SYSTEM SET bento.poll_interval = '5ms';
ALTER SYSTEM SET bento.poll_interval = '2h';
ALTER SYSTEM SET bento.retry_base_delay = '25h';
ALTER SYSTEM SET bento.retry_max_delay = '1d';
SELECT name, setting, error FROM pg_file_settings
WHERE sourcefile LIKE '%postgresql.auto.conf' ORDER BY seqno;

-- Nothing took effect without a reload.
SHOW bento.api_url;
SHOW bento.request_timeout;

ALTER SYSTEM RESET ALL;
SELECT count(*) AS auto_conf_entries FROM pg_file_settings
WHERE sourcefile LIKE '%postgresql.auto.conf';

DROP ROLE regress_bento_guc;
