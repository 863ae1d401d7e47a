
# Copyright: the bento extension's authors.

# The delivery policy: give-up points (attempts, age), 429 that costs no attempt, isolation of
# the events that make Bento refuse a whole batch (400), unitemized failures, garbage answers,
# pacing under bento.max_requests_per_minute, and retention with the dedupe window.

use strict;
use warnings;

use FindBin;
use lib $FindBin::Bin;

use BentoTest qw(:DEFAULT delivery_mark deliveries_after rows_like);
use List::Util qw(max);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $mock = BentoTest::Mock->start;
my $node = bento_node('retry', $mock, 'bento.retry_base_delay' => '100ms');

sub received_like
{
	my ($prefix) = @_;
	return [ sort map { $_->{email} } grep { index($_->{email}, $prefix) == 0 } @{ $mock->events } ];
}

# ---------------------------------------------------------------------------------------------
note('give up after bento.max_attempts transient failures');
{
	$mock->reset;
	set_conf($node, 'bento.max_attempts' => 3);
	$mock->script(map { +{ status => 503, body => { error => 'upstream unavailable' } } } 1 .. 3);
	track($node, { email => 'giveup-1@example.com' }, { email => 'giveup-2@example.com' });
	wait_settled($node);
	my $rows = rows_like($node, 'giveup-');
	is_deeply([ map { [ $_->{status}, $_->{attempts} ] } @$rows ],
		[ [ 'dead', 3 ], [ 'dead', 3 ] ], 'dead after 3 attempts');
	like($rows->[0]{last_error},
		qr/^HTTP 503 after 3 attempts over \d+ seconds: .*upstream unavailable/,
		'the reason names the status, the attempts, the time and Bento\'s words');
	is(scalar @{ $mock->requests('bodies=0') }, 3, 'three requests, no fourth');
	is_deeply(received_like('giveup-'), [], 'nothing was received');
	set_conf($node, 'bento.max_attempts' => 100);
}

# ---------------------------------------------------------------------------------------------
note('give up after bento.max_retry_age');
{
	$mock->reset;
	# Credentials off while the event is backdated, so that the worker cannot send it first.
	set_conf($node, 'bento.site_uuid' => '');
	my ($id) = track($node, { email => 'aged-1@example.com' });
	$node->safe_psql('postgres',
		"UPDATE bento.outbox SET enqueued_at = now() - interval '4 days' WHERE id = $id");
	$mock->script({ status => 500, body => { error => 'still broken' } });
	set_conf($node, 'bento.site_uuid' => $BentoTest::SITE_UUID);
	wait_settled($node);
	my $row = rows_like($node, 'aged-')->[0];
	is($row->{status}, 'dead', 'an event older than bento.max_retry_age (3 days) dies at its first failure');
	like($row->{last_error}, qr/^HTTP 500 after 1 attempts over 4 days: .*still broken/,
		'the reason says how long it was tried');

	# Requeued, it gets a full new cycle: the age counts from the requeue.
	$mock->script({ status => 500, body => { error => 'still broken' } });
	is($node->safe_psql('postgres', "SELECT bento.requeue_dead(ARRAY[$id]::bigint[])"),
		1, 'requeued');
	wait_settled($node);
	$row = rows_like($node, 'aged-')->[0];
	is_deeply([ $row->{status}, $row->{attempts} ], [ 'sent', 2 ],
		'after a requeue the old age no longer kills it: retried, then sent');
	is_deeply(received_like('aged-'), ['aged-1@example.com'], 'received once');
}

# ---------------------------------------------------------------------------------------------
note('429 pauses the sender and costs no attempt');
{
	$mock->reset;
	my $mark = delivery_mark($node);
	$mock->script({ status => 429, headers => { 'Retry-After' => '1' }, body => { error => 'slow down' } });
	track($node, { email => 'rate-1@example.com' });
	wait_settled($node);
	my $row = rows_like($node, 'rate-')->[0];
	is_deeply([ $row->{status}, $row->{attempts} ], [ 'sent', 1 ],
		'sent; the 429 did not count as an attempt');
	my $reqs = $mock->requests('bodies=0');
	is_deeply([ map { $_->{status} } @$reqs ], [ 429, 200 ], 'a 429, then a 200');
	cmp_ok($reqs->[1]{received_at} - $reqs->[0]{received_at}, '>=', 0.95,
		'the retry waited for Retry-After');
	is_deeply([ map { $_->{outcome} } @{ deliveries_after($node, $mark) } ], [ 'retry', 'delivered' ],
		'deliveries: retry, delivered');
}

# ---------------------------------------------------------------------------------------------
note('a 400 for a whole batch: split until the bad events stand alone');
{
	$mock->reset;
	set_conf($node, 'bento.batch_size' => 10);
	my $mark = delivery_mark($node);
	my @events = map {
		+{ email => ($_ == 4 || $_ == 8) ? "split-$_\@poison.test" : "split-$_\@example.com" }
	} 1 .. 10;
	track($node, @events);
	wait_settled($node);

	my $rows = json_query($node,
		"SELECT email, status::text, attempts, last_error FROM bento.outbox WHERE email LIKE 'split-%' ORDER BY id");
	is_deeply([ map { [ $_->{email}, $_->{status} ] } @$rows ],
		[ map { [ $_->{email}, $_->{email} =~ /poison/ ? 'dead' : 'sent' ] } @events ],
		'the two bad events are dead, the eight others sent');
	like($_->{last_error}, qr/^HTTP 400: .*email domain is not allowed/, "$_->{email}: Bento's reason")
	  foreach grep { $_->{status} eq 'dead' } @$rows;
	is_deeply(received_like('split-'),
		[ sort map { $_->{email} } grep { $_->{email} !~ /poison/ } @events ],
		'every good event was received exactly once');
	my $d = deliveries_after($node, $mark);
	my @outcomes = map { $_->{outcome} } @$d;
	ok((grep { $_ eq 'split' } @outcomes) >= 2, 'the batch was split (' . join(', ', @outcomes) . ')');
	is(scalar(grep { $_->{outcome} eq 'rejected' && $_->{event_count} == 1 } @$d), 2,
		'each bad event was refused alone');
	ok(!(grep { $_->{attempts} > 1 } grep { $_->{status} eq 'sent' } @$rows),
		'splitting cost the good events no attempts');
	# 10 F, 1-5 F, 1-2, 3-4 F, 3, 4 (alone), 5-6, 7-8 F, 7, 8 (alone), 9-10
	is(scalar @$d, 11, 'eleven requests: a binary search (' . join(' ', map { $_->{event_count} } @$d) . ')');

	# Back to full batches afterwards.
	$mark = delivery_mark($node);
	track($node, map { +{ email => "after-split-$_\@example.com" } } 1 .. 10);
	wait_settled($node);
	is_deeply([ map { $_->{event_count} } @{ deliveries_after($node, $mark) } ], [10],
		'the next batch is full size again');
	set_conf($node, 'bento.batch_size' => 1000);
}

# ---------------------------------------------------------------------------------------------
note('Bento reports more failures than it lists: later batches shrink');
{
	$mock->reset;
	my $mark = delivery_mark($node);
	$mock->script({
		status => 200,
		body   => {
			results => 0,
			failed  => 25,
			errors  => [ map { +{ index => $_, error => "bad event $_" } } 0 .. 19 ]
		},
		record => 0
	});
	track($node, map { +{ email => sprintf('unlisted-%02d@example.com', $_) } } 1 .. 25);
	wait_settled($node);
	my $rows = rows_like($node, 'unlisted-');
	is(scalar(grep { $_->{status} eq 'dead' } @$rows), 20, 'the 20 listed events are dead');
	is(scalar(grep { $_->{status} eq 'sent' } @$rows), 5, 'the unlisted ones are marked sent');
	ok($node->log_contains(qr/Bento rejected 25 events of delivery \d+ but named only 20 of them/),
		'the counts are logged');

	track($node, map { +{ email => sprintf('after-unlisted-%02d@example.com', $_) } } 1 .. 50);
	wait_settled($node);
	my @sizes = map { $_->{event_count} } @{ deliveries_after($node, $mark) };
	shift @sizes;
	cmp_ok($sizes[0], '<=', 20, "the next batch holds at most 20 events (sizes: @sizes)");
	is_deeply(received_like('after-unlisted-'),
		[ map { sprintf('after-unlisted-%02d@example.com', $_) } 1 .. 50 ], 'all delivered');
}

# ---------------------------------------------------------------------------------------------
note('garbage answers');
{
	$mock->reset;
	# A 200 whose body is not JSON still means queued.
	$mock->script({ status => 200, body => '<html>OK</html>' });
	track($node, { email => 'garbage-html@example.com' });
	wait_settled($node);
	is(rows_like($node, 'garbage-html')->[0]{status}, 'sent', '200 with an HTML body: sent');
	ok($node->log_contains(qr/Bento answered HTTP 200 with a body that is not JSON/), 'and logged');

	# A huge 500 body: reading stops, the excerpt is short, the event is retried.
	$mock->script({ status => 500, body => ('x' x 200_000) });
	track($node, { email => 'garbage-huge@example.com' });
	wait_settled($node);
	my $row = rows_like($node, 'garbage-huge')->[0];
	is_deeply([ $row->{status}, $row->{attempts} ], [ 'sent', 2 ], 'huge 500: retried, then sent');
	my $d = json_query($node,
		"SELECT http_status, length(response_body) AS len, transport_error FROM bento.deliveries"
		  . " WHERE http_status = 500 ORDER BY id DESC LIMIT 1")->[0];
	is($d->{http_status}, 500, 'the status was read although the body was cut off');
	cmp_ok($d->{len}, '<=', 8 * 1024 + 3, 'at most 8 kB of the body is kept');
	ok($node->log_contains(qr/with a body over 65536 bytes/), 'the cut is logged');
}

# ---------------------------------------------------------------------------------------------
note('retention: sent events and deliveries go; external_ids stay for the dedupe window');
{
	$mock->reset;
	set_conf($node, 'bento.retention' => '2s', 'bento.dedupe_window' => '6s');
	my ($id) = track($node, { email => 'keep-1@example.com', external_id => 'keep-ext-1' });
	wait_settled($node);
	wait_sql($node, "SELECT NOT EXISTS (SELECT 1 FROM bento.outbox WHERE id = $id)",
		'the sent event is deleted after bento.retention');
	wait_sql($node,
		"SELECT NOT EXISTS (SELECT 1 FROM bento.deliveries WHERE finished_at < now() - interval '2 seconds')",
		'old delivery records are deleted');
	is($node->safe_psql('postgres', "SELECT count(*) FROM bento.outbox WHERE status = 'dead'") > 0,
		1, 'dead events are kept');

	my ($again) = track($node, { email => 'keep-1@example.com', external_id => 'keep-ext-1' });
	is($again, $id, 'within the window the external_id still dedupes: the old id comes back');
	is($node->safe_psql('postgres', "SELECT count(*) FROM bento.outbox WHERE external_id = 'keep-ext-1'"),
		0, 'and nothing is queued');

	wait_sql($node, "SELECT NOT EXISTS (SELECT 1 FROM bento.dedupe WHERE external_id = 'keep-ext-1')",
		'after bento.dedupe_window the key is deleted');
	my ($new) = track($node, { email => 'keep-1@example.com', external_id => 'keep-ext-1' });
	isnt($new, $id, 'then the external_id can be queued again');
	wait_settled($node);
	is(scalar @{ received_like('keep-1') }, 2, 'and is sent again');
	set_conf($node, 'bento.retention' => '7d', 'bento.dedupe_window' => '30d');
}

# ---------------------------------------------------------------------------------------------
note('pacing: never more than bento.max_requests_per_minute in any 60 s window, retries included');
{
	$mock->reset;
	set_conf($node, 'bento.max_requests_per_minute' => 3, 'bento.batch_size' => 1);
	$mock->script({ status => 500, body => { error => 'counts too' } });
	track($node, map { +{ email => "pace-$_\@example.com" } } 1 .. 5);
	wait_settled($node);
	my @t = map { $_->{received_at} } @{ $mock->requests('bodies=0') };
	is(scalar @t, 6, 'six requests: five events, one of them retried');
	my $worst = max(map { $t[$_ + 3] - $t[$_] } 0 .. $#t - 3);
	my $tightest = (sort { $a <=> $b } map { $t[$_ + 3] - $t[$_] } 0 .. $#t - 3)[0];
	cmp_ok($tightest, '>=', 59.5,
		sprintf('any four consecutive requests span at least 60 s (tightest %.1f s)', $tightest));
	note(sprintf('send times: %s; widest span of four: %.1f s', join(' ', map { sprintf('%.1f', $_ - $t[0]) } @t), $worst));
	is_deeply(received_like('pace-'), [ map { "pace-$_\@example.com" } 1 .. 5 ], 'all delivered once');
	set_conf($node, 'bento.max_requests_per_minute' => 0, 'bento.batch_size' => 1000);
}

$node->stop;
done_testing();
