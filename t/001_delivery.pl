
# Copyright: the bento extension's authors.

# Delivery through the worker against the mock Bento server: the exact request, rollback,
# deduplication, batch splitting, Bento's per-event errors, 422 / 4xx (dead), 5xx / 429 /
# timeout / connection failures (retried), and reloading api_url and the keys.

use strict;
use warnings;

use FindBin;
use lib $FindBin::Bin;

use BentoTest qw(:DEFAULT delivery_mark deliveries_after rows_like);
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $mock = BentoTest::Mock->start;
my $node = bento_node('delivery', $mock);

my $DATE_RE = qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$/;

sub emails { return [ map { $_->{email} } @{ $_[0] } ] }

sub received_like
{
	my ($prefix) = @_;
	return [ grep { index($_->{email}, $prefix) == 0 } @{ $mock->events } ];
}

# The outcome of a request that left the worker but got no complete answer (timeout, dropped
# connection, truncated 200).  The brief says 'retry'; the schema's comment calls a request
# whose outcome could not be known 'unknown'.  Both requeue the rows; either is accepted here.
my $NO_ANSWER_OUTCOME = qr/^(retry|unknown)$/;

# ---------------------------------------------------------------------------------------------
note('the exact request');
{
	$mock->reset;
	my $mark = delivery_mark($node);
	my @ids = track(
		$node,
		{
			type        => '$signup',
			email       => 'shape-1@example.com',
			fields      => { first_name => 'Ada', plan_count => 3 },
			details     => { plan => 'pro', source => { utm => 'x', tags => [ 1, 'two' ] } },
			external_id => 'shape-ext-1',
			occurred_at => '2026-01-02 03:04:05.123456+00'
		},
		{
			type        => 'crm.deal_won',
			email       => 'shape-2@example.com',
			details     => { value => { amount => 9.99, currency => 'USD' } },
			occurred_at => '2026-01-02 04:04:05+01'
		},
		{ type => '$tag', email => 'shape-3@example.com' });
	is(scalar @ids, 3, 'bento_track returned three ids');
	wait_settled($node, 'the three events were delivered');

	my $reqs = $mock->requests;
	is(scalar @$reqs, 1, 'one request for one committed transaction');
	my $r = $reqs->[0];
	is($r->{method}, 'POST', 'method is POST');
	is($r->{path}, '/api/v1/batch/events', 'path is /api/v1/batch/events');
	is_deeply($r->{query}, { site_uuid => $SITE_UUID }, 'site_uuid is in the query string');
	is($r->{headers}{authorization}, basic_auth($PUBLISHABLE_KEY, $SECRET_KEY),
		'HTTP Basic auth publishable:secret');
	like($r->{headers}{'content-type'}, qr{^application/json\b}, 'Content-Type: application/json');
	is($r->{headers}{accept}, 'application/json', 'Accept: application/json');
	is($r->{headers}{'user-agent'}, 'bento-postgres/1.0', 'User-Agent: bento-postgres/1.0');
	is($r->{status}, 200, 'the mock accepted the request');
	is_deeply([ sort keys %{ $r->{body} } ], ['events'], 'the body holds only "events"');

	my $ev = $r->{body}{events};
	is_deeply(emails($ev), [ map { "shape-$_\@example.com" } 1 .. 3 ], 'events in outbox id order');
	is_deeply([ sort keys %{ $ev->[0] } ], [qw(date details email fields type)], 'event 1 keys');
	is_deeply([ sort keys %{ $ev->[1] } ], [qw(date details email type)],
		'event 2 keys: fields left out when NULL');
	is_deeply([ sort keys %{ $ev->[2] } ], [qw(date email type)],
		'event 3 keys: fields and details left out when NULL');
	is($ev->[0]{type}, '$signup', 'type');
	is_deeply($ev->[0]{fields}, { first_name => 'Ada', plan_count => 3 }, 'fields as queued');
	is_deeply($ev->[0]{details}, { plan => 'pro', source => { utm => 'x', tags => [ 1, 'two' ] } },
		'nested details as queued');
	is_deeply($ev->[1]{details}, { value => { amount => 9.99, currency => 'USD' } }, 'details.value');
	like($_->{date}, $DATE_RE, "date $_->{date} is ISO 8601 UTC") foreach @$ev;
	is($ev->[0]{date}, '2026-01-02T03:04:05.123456Z', 'date keeps microseconds');
	like($ev->[1]{date}, qr/^2026-01-02T03:04:05(\.0+)?Z$/, 'date is converted to UTC');

	my $rows = rows_like($node, 'shape-');
	is_deeply([ map { $_->{status} } @$rows ], [qw(sent sent sent)], 'outbox rows are sent');
	is_deeply([ map { $_->{attempts} } @$rows ], [ 1, 1, 1 ], 'one attempt each');
	ok(!(grep { !defined $_->{sent_at} } @$rows), 'sent_at is set');
	my $d = deliveries_after($node, $mark);
	is(scalar @$d, 1, 'one delivery recorded');
	is_deeply([ map { $_->{delivery_id} } @$rows ], [ ($d->[0]{id}) x 3 ],
		'outbox.delivery_id points at it');
	is($d->[0]{outcome}, 'delivered', 'outcome delivered');
	is($d->[0]{http_status}, 200, 'http_status 200');
	is($d->[0]{results}, 3, 'results 3');
	is($d->[0]{failed}, 0, 'failed 0');
	is($d->[0]{event_count}, 3, 'event_count 3');
	ok(defined $d->[0]{finished_at}, 'finished_at is set');

	my $status = json_query($node, 'SELECT * FROM bento.status')->[0];
	is($status->{last_delivery_outcome}, 'delivered', 'bento.status: last outcome');
	is($status->{last_http_status}, 200, 'bento.status: last http status');
	ok($status->{worker_running}, 'bento.status: worker_running');
	is($status->{pending} + $status->{sending}, 0, 'bento.status: nothing pending');

	note('a duplicate external_id returns the existing id and queues nothing');
	my $count = $node->safe_psql('postgres', 'SELECT count(*) FROM bento.outbox');
	my ($dup) = track($node,
		{ type => '$signup', email => 'shape-dup@example.com', external_id => 'shape-ext-1' });
	is($dup, $ids[0], 'duplicate external_id returns the first id');
	is($node->safe_psql('postgres', 'SELECT count(*) FROM bento.outbox'), $count,
		'no row was added');
	# A later event proves the worker had its chance to send anything queued.
	track($node, { email => 'shape-after-dup@example.com' });
	wait_settled($node);
	is_deeply(emails(received_like('shape-')),
		[ map { "shape-$_\@example.com" } 1, 2, 3, 'after-dup' ],
		'the duplicate was never sent');
}

# ---------------------------------------------------------------------------------------------
note('rollback sends nothing');
{
	$mock->reset;
	track($node, { email => 'rollback-1@example.com' }, { email => 'rollback-2@example.com' },
		{ rollback => 1 });
	track($node, { email => 'rollback-after@example.com' });
	wait_settled($node);
	is_deeply(emails($mock->events), ['rollback-after@example.com'],
		'only the committed event reached Bento');
	is(scalar @{ rows_like($node, 'rollback-') }, 1, 'the rolled back events are not in the outbox');
}

# ---------------------------------------------------------------------------------------------
note('a backlog larger than bento.batch_size is split');
{
	set_conf($node, 'bento.batch_size' => 10);
	$mock->reset;
	my $mark = delivery_mark($node);
	track($node, map { +{ email => sprintf('split-%02d@example.com', $_) } } 1 .. 25);
	wait_settled($node);
	my $reqs = $mock->requests;
	is_deeply([ map { scalar @{ $_->{body}{events} } } @$reqs ], [ 10, 10, 5 ],
		'25 events went out as 10 + 10 + 5');
	is_deeply([ map { @{ emails($_->{body}{events}) } } @$reqs ],
		[ map { sprintf('split-%02d@example.com', $_) } 1 .. 25 ],
		'in outbox id order, each once');
	is_deeply([ map { $_->{outcome} } @{ deliveries_after($node, $mark) } ], [ ('delivered') x 3 ],
		'three deliveries, all delivered');
	is(scalar(grep { $_->{status} eq 'sent' && $_->{attempts} == 1 } @{ rows_like($node, 'split-') }),
		25, 'all 25 sent in one attempt');
	set_conf($node, 'bento.batch_size' => 1000);
}

# ---------------------------------------------------------------------------------------------
note('partial failure: the events Bento names in errors[] are dead, the rest sent');
{
	$mock->reset;
	my $mark = delivery_mark($node);
	track($node,
		{ email => 'partial-ok1@example.com' },
		{ email => 'partial-bad1@reject.test' },
		{ email => 'partial-ok2@example.com' },
		{ email => 'partial-bad2@reject.test' });
	wait_settled($node);
	my %row = map { $_->{email} => $_ } @{ rows_like($node, 'partial-') };
	is($row{'partial-ok1@example.com'}{status}, 'sent', 'ok1 sent');
	is($row{'partial-ok2@example.com'}{status}, 'sent', 'ok2 sent');
	is($row{'partial-bad1@reject.test'}{status}, 'dead', 'bad1 dead');
	is($row{'partial-bad2@reject.test'}{status}, 'dead', 'bad2 dead');
	is($row{'partial-bad1@reject.test'}{last_error}, 'Email partial-bad1@reject.test was rejected',
		"bad1's last_error is Bento's error for its index");
	is($row{'partial-bad2@reject.test'}{last_error}, 'Email partial-bad2@reject.test was rejected',
		"bad2's last_error is Bento's error for its index");
	is($row{$_}{attempts}, 1, "$_: one attempt") foreach sort keys %row;
	my $d = deliveries_after($node, $mark);
	is(scalar @$d, 1, 'one request');
	is($d->[0]{outcome}, 'partial', 'outcome partial');
	is($d->[0]{http_status}, 200, 'http_status 200');
	is($d->[0]{results}, 2, 'results 2');
	is($d->[0]{failed}, 2, 'failed 2');
	like($d->[0]{response_body}, qr/partial-bad1\@reject\.test was rejected/,
		'response_body kept');
	is_deeply(emails($mock->events), [ 'partial-ok1@example.com', 'partial-ok2@example.com' ],
		'Bento got the two good events');
}

# ---------------------------------------------------------------------------------------------
note('422: every event rejected, all dead, no retry');
{
	$mock->reset;
	my $mark = delivery_mark($node);
	track($node, { email => 'all-bad1@reject.test' }, { email => 'all-bad2@reject.test' });
	wait_settled($node);
	my $rows = rows_like($node, 'all-bad');
	is_deeply([ map { $_->{status} } @$rows ], [qw(dead dead)], 'both dead');
	like($_->{last_error}, qr/\Q$_->{email}\E was rejected/, "$_->{email}: Bento's error kept")
	  foreach @$rows;
	my $d = deliveries_after($node, $mark);
	is(scalar @$d, 1, 'one request, not retried');
	is($d->[0]{outcome}, 'rejected', 'outcome rejected');
	is($d->[0]{http_status}, 422, 'http_status 422');
	is($d->[0]{failed}, 2, 'failed 2');
	is(scalar @{ $mock->requests }, 1, 'the mock saw one request');
}

# ---------------------------------------------------------------------------------------------
note('400 and 403: dead with the status and an excerpt of the body');
{
	$mock->reset;
	my $mark = delivery_mark($node);
	$mock->script({ status => 400, body => { error => 'events[0]: email is required' } });
	track($node, { email => 'bad400@example.com' });
	wait_settled($node);
	my $row = rows_like($node, 'bad400')->[0];
	is($row->{status}, 'dead', '400: dead');
	like($row->{last_error}, qr/400/, '400: last_error names the status');
	like($row->{last_error}, qr/email is required/, "400: last_error holds Bento's error");
	is($row->{attempts}, 1, '400: not retried');
	my $d = deliveries_after($node, $mark);
	is_deeply([ map { [ $_->{outcome}, $_->{http_status} ] } @$d ], [ [ 'rejected', 400 ] ],
		'400: one delivery, rejected');

	$mock->reset;
	$mark = delivery_mark($node);
	$mock->script(
		{
			status  => 403,
			body    => "<!DOCTYPE html><html><head><title>Attention Required! | Cloudflare</title></head>"
			  . "<body>Sorry, you have been blocked</body></html>",
			headers => { 'Content-Type' => 'text/html; charset=UTF-8' }
		});
	track($node, { email => 'bad403@example.com' });
	wait_settled($node);
	$row = rows_like($node, 'bad403')->[0];
	is($row->{status}, 'dead', '403: dead');
	like($row->{last_error}, qr/403/, '403: last_error names the status');
	like($row->{last_error}, qr/Cloudflare|blocked/, '403: last_error holds a body excerpt');
	is($row->{attempts}, 1, '403: not retried');
	$d = deliveries_after($node, $mark);
	is_deeply([ map { [ $_->{outcome}, $_->{http_status} ] } @$d ], [ [ 'rejected', 403 ] ],
		'403: one delivery, rejected');
	like($d->[0]{response_body}, qr/Cloudflare/, '403: response_body kept');
}

# ---------------------------------------------------------------------------------------------
note('500 once, then delivered');
{
	$mock->reset;
	my $mark = delivery_mark($node);
	$mock->script({ status => 500, body => { error => 'boom' } });
	track($node, { email => 'retry500-1@example.com' }, { email => 'retry500-2@example.com' });
	wait_settled($node);
	my $reqs = $mock->requests;
	is_deeply([ map { $_->{status} } @$reqs ], [ 500, 200 ], 'a 500, then a 200');
	is_deeply(emails($reqs->[1]{body}{events}), emails($reqs->[0]{body}{events}),
		'the same events were sent again');
	is_deeply([ map { [ $_->{status}, $_->{attempts} ] } @{ rows_like($node, 'retry500-') } ],
		[ [ 'sent', 2 ], [ 'sent', 2 ] ], 'sent, after two attempts');
	my $d = deliveries_after($node, $mark);
	is_deeply([ map { [ $_->{outcome}, $_->{http_status} ] } @$d ],
		[ [ 'retry', 500 ], [ 'delivered', 200 ] ], 'deliveries: retry (500), delivered');
	like($d->[0]{response_body}, qr/boom/, 'the 500 body is kept');
	is_deeply(emails($mock->events), [ 'retry500-1@example.com', 'retry500-2@example.com' ],
		'each event received once');
}

# ---------------------------------------------------------------------------------------------
note('429 with Retry-After: nothing is sent until it has passed');
{
	$mock->reset;
	my $mark = delivery_mark($node);
	$mock->script({ status => 429, headers => { 'Retry-After' => '2' }, body => { error => 'slow down' } });
	track($node, { email => 'rate-1@example.com' });
	$mock->wait_requests(1);
	# Queued while the worker is told to wait: must not go out before the pause is over either.
	track($node, { email => 'rate-2@example.com' });
	wait_settled($node);
	my $reqs = $mock->requests;
	is($reqs->[0]{status}, 429, 'first answer 429');
	ok(@$reqs >= 2, 'then more requests');
	my $answered = $reqs->[0]{finished_at};
	my @early = grep { $_->{received_at} < $answered + 1.9 } @$reqs[ 1 .. $#$reqs ];
	is(scalar @early, 0, 'no request within the 2 s of Retry-After')
	  or diag(sprintf('request %.3f s after the 429', $early[0]{received_at} - $answered));
	my $d = deliveries_after($node, $mark);
	is($d->[0]{outcome}, 'retry', 'the 429 delivery: outcome retry');
	is($d->[0]{http_status}, 429, 'the 429 delivery: http_status 429');
	is($d->[0]{retry_after}, '00:00:02', 'retry_after recorded');
	is($node->safe_psql('postgres',
		"SELECT o.next_attempt_at >= d.finished_at + interval '1.9 s' FROM bento.outbox o, bento.deliveries d"
		  . " WHERE o.email = 'rate-1\@example.com' AND d.id = $d->[0]{id}"),
		't', 'the 429 put next_attempt_at at least Retry-After later');
	is_deeply([ map { $_->{status} } @{ rows_like($node, 'rate-') } ], [qw(sent sent)], 'both sent');
	is_deeply([ sort @{ emails($mock->events) } ], [ 'rate-1@example.com', 'rate-2@example.com' ],
		'each received once');
}

# ---------------------------------------------------------------------------------------------
note('timeout: a hung request is given up after bento.request_timeout and sent again');
{
	set_conf($node, 'bento.request_timeout' => '1s');
	$mock->reset;
	my $mark = delivery_mark($node);
	$mock->script({ hang => 1 });
	track($node, { email => 'timeout-1@example.com' });
	wait_settled($node);
	my $reqs = $mock->requests;
	is($reqs->[0]{action}, 'abandoned', 'the worker hung up on the hung request');
	is($reqs->[-1]{status}, 200, 'then it was delivered');
	my $d = deliveries_after($node, $mark);
	like($d->[0]{outcome}, $NO_ANSWER_OUTCOME, "timed-out delivery: outcome $d->[0]{outcome}");
	like($d->[0]{transport_error} // '', qr/time/i, 'transport_error says it timed out');
	is($d->[-1]{outcome}, 'delivered', 'last delivery: delivered');
	my $row = rows_like($node, 'timeout-1')->[0];
	is_deeply([ $row->{status}, $row->{attempts} ], [ 'sent', scalar @$reqs ],
		'sent; attempts = number of requests');
	is_deeply(emails($mock->events), ['timeout-1@example.com'], 'received once');
	set_conf($node, 'bento.request_timeout' => '30s');
	$mock->release;
}

# ---------------------------------------------------------------------------------------------
note('connection refused, then api_url reloaded to a working server');
{
	my $mock2 = BentoTest::Mock->start(name => 'second');
	my $dead  = free_port();
	set_conf($node, 'bento.api_url' => "http://127.0.0.1:$dead/api/v1");
	$mock->reset;
	my $mark = delivery_mark($node);
	track($node, { email => 'refused-1@example.com' });
	wait_sql(
		$node,
		"SELECT EXISTS (SELECT 1 FROM bento.deliveries WHERE id > $mark AND transport_error IS NOT NULL)",
		'a connection failure was recorded');
	my $d = deliveries_after($node, $mark);
	is($d->[0]{outcome}, 'retry', 'refused: outcome retry');
	like($d->[0]{transport_error}, qr/connect|refused/i, 'transport_error says why');
	ok(!defined $d->[0]{http_status}, 'no http_status');
	wait_sql($node,
		"SELECT o.status = 'pending' AND o.attempts >= 1 AND o.next_attempt_at > d.finished_at"
		  . " FROM bento.outbox o JOIN bento.deliveries d ON d.id = o.delivery_id"
		  . " WHERE o.email = 'refused-1\@example.com'",
		'the event is pending again, attempt counted, next_attempt_at later');

	set_conf($node, 'bento.api_url' => $mock2->api_url);
	wait_settled($node);
	is_deeply(emails($mock2->events), ['refused-1@example.com'],
		'delivered to the server bento.api_url now names');
	is(scalar @{ $mock->requests }, 0, 'the old server saw nothing');
	is(rows_like($node, 'refused-1')->[0]{status}, 'sent', 'sent');

	set_conf($node, 'bento.api_url' => $mock->api_url);
	track($node, { email => 'refused-back@example.com' });
	wait_settled($node);
	is_deeply(emails($mock->events), ['refused-back@example.com'], 'and back to the first server');
	$mock2->stop;
}

# ---------------------------------------------------------------------------------------------
note('connection dropped without an answer, then delivered');
{
	$mock->reset;
	my $mark = delivery_mark($node);
	# Two drops: when the first lands on a reused keep-alive connection, libcurl itself sends the
	# request again on a new connection (it does that when a reused connection dies before any
	# byte of an answer); the second drop then reaches the worker.
	$mock->script({ drop => 1 }, { drop => 1 });
	track($node, { email => 'drop-1@example.com' }, { email => 'drop-2@example.com' });
	wait_settled($node);
	my $reqs = $mock->requests;
	is_deeply([ map { $_->{action} } @$reqs ], [ 'drop', 'drop', 'default' ],
		'dropped twice, then answered');
	my $d = deliveries_after($node, $mark);
	ok(@$d >= 2, scalar(@$d) . ' deliveries recorded');
	my @failed = @$d[ 0 .. $#$d - 1 ];
	ok(!(grep { $_->{outcome} !~ $NO_ANSWER_OUTCOME } @failed),
		'deliveries before the last: ' . join(', ', map { $_->{outcome} } @failed));
	ok(!(grep { !length($_->{transport_error} // '') } @failed),
		'they have a transport_error: ' . join(', ', map { $_->{transport_error} // 'NULL' } @failed));
	is($d->[-1]{outcome}, 'delivered', 'then delivered');
	is_deeply([ map { [ $_->{status}, $_->{attempts} ] } @{ rows_like($node, 'drop-') } ],
		[ [ 'sent', scalar @$d ], [ 'sent', scalar @$d ] ], 'sent; attempts = deliveries');
	is_deeply(emails($mock->events), [ 'drop-1@example.com', 'drop-2@example.com' ],
		'each received once');
}

# ---------------------------------------------------------------------------------------------
note('a 200 whose body is cut short is not a success: sent again');
{
	$mock->reset;
	my $mark = delivery_mark($node);
	# By default the mock counts the events of a truncated 200 as received (Bento queued them,
	# the answer got lost): the resend is an expected duplicate.
	$mock->script({ truncate => 1 });
	track($node, { email => 'trunc-1@example.com' }, { email => 'trunc-2@example.com' });
	wait_settled($node);
	my $reqs = $mock->requests;
	is_deeply([ map { [ $_->{action}, $_->{status} ] } @$reqs ],
		[ [ 'truncate', 200 ], [ 'default', 200 ] ], 'a truncated 200, then a full one');
	my $d = deliveries_after($node, $mark);
	like($d->[0]{outcome}, $NO_ANSWER_OUTCOME, "truncated delivery: outcome $d->[0]{outcome}");
	ok(length($d->[0]{transport_error} // ''), "transport_error: $d->[0]{transport_error}");
	is($d->[1]{outcome}, 'delivered', 'then delivered');
	is_deeply([ map { [ $_->{status}, $_->{attempts} ] } @{ rows_like($node, 'trunc-') } ],
		[ [ 'sent', 2 ], [ 'sent', 2 ] ], 'sent after two attempts');
	is_deeply(email_counts($mock->events), { 'trunc-1@example.com' => 2, 'trunc-2@example.com' => 2 },
		'Bento got them twice (the first answer was lost)');
}

# ---------------------------------------------------------------------------------------------
note('reloading the keys takes effect');
{
	$mock->reset;
	my $mark = delivery_mark($node);
	set_conf($node, 'bento.secret_key' => 'sk_wrong_key');
	track($node, { email => 'keys-wrong@example.com' });
	wait_settled($node);
	my $row = rows_like($node, 'keys-wrong')->[0];
	is($row->{status}, 'dead', '401: dead');
	like($row->{last_error}, qr/401/, '401: last_error names the status');
	like($row->{last_error}, qr/Invalid credentials/, "401: last_error holds Bento's error");
	my $reqs = $mock->requests;
	is($reqs->[0]{headers}{authorization}, basic_auth($PUBLISHABLE_KEY, 'sk_wrong_key'),
		'the reloaded (wrong) secret was used');
	is_deeply([ map { [ $_->{outcome}, $_->{http_status} ] } @{ deliveries_after($node, $mark) } ],
		[ [ 'rejected', 401 ] ], 'one delivery, rejected with 401');

	set_conf($node, 'bento.secret_key' => $SECRET_KEY, 'bento.publishable_key' => $PUBLISHABLE_KEY);
	track($node, { email => 'keys-right@example.com' });
	wait_settled($node);
	is(rows_like($node, 'keys-right')->[0]{status}, 'sent', 'with the right key again: sent');
	is_deeply(emails($mock->events), ['keys-right@example.com'], 'received');
}

# ---------------------------------------------------------------------------------------------
note('final state');
{
	is($node->safe_psql('postgres',
		"SELECT count(*) FROM bento.deliveries WHERE outcome = 'in_flight' OR finished_at IS NULL"),
		0, 'no delivery left in flight');
	ok(worker_pid($node), 'the worker is still running');
}

$node->stop;
done_testing();
