--
-- The retry schedule's arithmetic, dead letters and requeueing.
--
-- The test instance runs with the default schedule: bento.retry_base_delay
-- 5s, bento.retry_max_delay 1h, jitter up to 25 %.
--
CREATE EXTENSION bento;

-- Without jitter: 5 s doubled per attempt, capped at one hour.
SELECT n AS attempts, bento.retry_delay(n, 0) AS delay
FROM generate_series(1, 12) n;

-- Monotonic before jitter, strictly until the cap, for a long run.
SELECT bool_and(d >= prev) AS never_shorter,
       bool_and(d > prev OR d = interval '1 hour') AS longer_until_capped,
       max(d) AS longest
FROM (SELECT bento.retry_delay(n, 0) AS d,
             lag(bento.retry_delay(n, 0), 1, interval '0') OVER (ORDER BY n) AS prev
      FROM generate_series(1, 200) n) s;

-- No overflow: huge, zero and negative attempt counts.
SELECT bento.retry_delay(2147483647, 0) AS max_int_attempts,
       bento.retry_delay(63, 0) AS attempts_63,
       bento.retry_delay(64, 0) AS attempts_64,
       bento.retry_delay(0, 0) AS zero_attempts,
       bento.retry_delay(-5, 0) AS negative_attempts;

-- Full jitter takes off exactly a quarter.
SELECT bento.retry_delay(1, 1) AS first_full_jitter,
       bento.retry_delay(30, 1) AS capped_full_jitter,
       bento.retry_delay(3, 0.5) AS third_half_jitter;

-- Random jitter stays within [75 %, 100 %] of the delay without jitter, and
-- actually varies.
SELECT bool_and(r <= bento.retry_delay(n, 0)) AS never_longer,
       bool_and(r >= bento.retry_delay(n, 0) * 0.75) AS never_shorter_than_three_quarters,
       count(DISTINCT r) > 100 AS varies
FROM (SELECT n, bento.retry_delay(n, NULL) AS r
      FROM generate_series(1, 20) n, generate_series(1, 50) k) s;

-- Jitter outside [0, 1] is an error; NULL attempts give NULL.
SELECT bento.retry_delay(1, 1.5);
SELECT bento.retry_delay(1, -0.1);
SELECT bento.retry_delay(1, 'NaN');
SELECT bento.retry_delay(NULL, 0) IS NULL AS null_attempts;

-- Durations in words, as used in give-up messages.
SELECT d, bento.describe_duration(d)
FROM (VALUES (interval '0'), (interval '40 seconds'), (interval '119 seconds'),
             (interval '2 minutes'), (interval '90 minutes'), (interval '2 hours'),
             (interval '47 hours'), (interval '2 days'), (interval '3 days 4 hours'),
             (interval '1 year')) v(d);

--
-- Dead letters
--
SELECT bento_track('$purchase', 'a@example.com', external_id => 'p-1') AS p1 \gset
SELECT bento_track('$purchase', 'b@example.com', external_id => 'p-2') AS p2 \gset
SELECT bento_track('signup', 'c@example.com') AS s1 \gset
SELECT bento_track('signup', 'd@example.com') AS s2 \gset
SELECT bento_track('signup', 'e@example.com') AS s3 \gset

-- What the worker does to an event it gives up on.
INSERT INTO bento.deliveries (event_count, outcome, http_status, finished_at)
VALUES (2, 'rejected', 422, now()) RETURNING id AS d1 \gset
UPDATE bento.outbox SET status = 'dead', attempts = 1, delivery_id = :d1,
	last_error = 'HTTP 422: email is not deliverable'
WHERE id IN (:p1, :p2);
UPDATE bento.outbox SET status = 'dead', attempts = 12,
	last_error = 'HTTP 503 after 12 attempts over 3 days: upstream unavailable'
WHERE id IN (:s1, :s2);
UPDATE bento.outbox SET status = 'sent', attempts = 1, sent_at = now() WHERE id = :s3;

SELECT id = :p1 AS is_p1, type, email, external_id, attempts, last_error, http_status,
       dead_since IS NOT NULL AS has_dead_since
FROM bento.dead_letters ORDER BY id;
SELECT dead FROM bento.status;

-- Requeue by id: pending, attempts reset, a new retry cycle.
SELECT bento.requeue_dead(ARRAY[:p1]::bigint[]) AS requeued;
SELECT status, attempts, requeued_at IS NOT NULL AS requeued, next_attempt_at <= now() AS due,
       last_error
FROM bento.outbox WHERE id = :p1;
-- Requeueing what is not dead does nothing.
SELECT bento.requeue_dead(ARRAY[:p1, :s3]::bigint[]) AS requeued_again;
SELECT status FROM bento.outbox WHERE id = :s3;

-- By filter: type, error pattern, enqueue time; filters combine.
SELECT bento.requeue_dead(type => 'signup', last_error_like => 'HTTP 422%') AS none_match;
SELECT bento.requeue_dead(type => '$purchase') AS by_type;
SELECT bento.requeue_dead(enqueued_before => now() - interval '1 day') AS none_that_old;
SELECT bento.requeue_dead(last_error_like => 'HTTP 503 after%', enqueued_after => now() - interval '1 day') AS by_error;
SELECT count(*) AS dead_left FROM bento.dead_letters;

-- All at once.
UPDATE bento.outbox SET status = 'dead', last_error = 'HTTP 401: bad key' WHERE id IN (:s1, :p2);
SELECT bento.requeue_dead() AS all_requeued;
SELECT status, count(*) FROM bento.outbox GROUP BY status ORDER BY status;

-- Ordinary roles may not requeue or read dead letters.
CREATE ROLE regress_retry_app;
SET ROLE regress_retry_app;
SELECT bento.requeue_dead();
SELECT count(*) FROM bento.dead_letters;
RESET ROLE;
DROP ROLE regress_retry_app;

DROP EXTENSION bento;
