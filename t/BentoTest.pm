
# Copyright: the bento extension's authors.

=pod

=head1 NAME

BentoTest - shared code of the bento TAP tests: the mock Bento server and a bento node

=head1 SYNOPSIS

  use FindBin;
  use lib $FindBin::Bin;
  use BentoTest;

  my $mock = BentoTest::Mock->start;
  my $node = bento_node('main', $mock);
  $mock->script({ status => 500 });
  my @ids = track($node, { type => '$signup', email => 'a@example.com' });
  wait_settled($node);
  my $requests = $mock->requests;

=head1 DESCRIPTION

C<BentoTest::Mock> runs mock/bento_mock.py (see its docstring) on an ephemeral port and talks to
its control endpoints with HTTP::Tiny.  The mocks are killed when the test ends.

C<bento_node> makes and starts a PostgreSQL::Test::Cluster with the bento library preloaded, the
worker pointed at a mock, and the extension created in database postgres.

=cut

package BentoTest;

use strict;
use warnings;

use Carp;
use Exporter 'import';
use File::Basename qw(dirname);
use File::Spec;
use HTTP::Tiny;
use IO::Socket::INET;
use JSON::PP;
use MIME::Base64 qw(encode_base64);
use POSIX ();
use Time::HiRes qw(usleep);

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

our @EXPORT = qw(
  $SITE_UUID $PUBLISHABLE_KEY $SECRET_KEY
  bento_node set_conf json_query sql_literal track
  wait_until wait_settled wait_sql worker_pid count_log_matches
  free_port basic_auth email_counts check_delivery_history
);

# Scenario helpers, imported by name (some tests define their own variants).
our @EXPORT_OK = qw(delivery_mark deliveries_after rows_like);

our $SITE_UUID       = '6f1d2c3b-4a5e-4f60-8b7c-9d0e1f2a3b4c';
our $PUBLISHABLE_KEY = 'pk_test_bento_5b8e';
our $SECRET_KEY      = 'sk_test_DO_NOT_LOG_9c4f7a1e2d';

my $JSON = JSON::PP->new->utf8->canonical->allow_nonref;

# The project root (t/..), wherever the test runs from.
my $ROOT = File::Spec->rel2abs(File::Spec->catdir(dirname(__FILE__), File::Spec->updir));

=pod

=head2 Functions

=over

=item bento_node($name, $mock, %settings)

Create, configure and start a node, then C<CREATE EXTENSION bento> in database postgres.
C<%settings> overrides or adds postgresql.conf settings; a value of undef leaves the setting out.
Strings are quoted for you.  Special keys: C<_no_start> (configure only) and C<_no_extension>.

=cut

sub bento_node
{
	my ($name, $mock, %settings) = @_;
	my $no_start     = delete $settings{_no_start};
	my $no_extension = delete $settings{_no_extension};

	my %conf = (
		shared_preload_libraries         => 'bento',
		'bento.database'                 => 'postgres',
		'bento.api_url'                  => $mock ? $mock->api_url : undef,
		'bento.site_uuid'                => $SITE_UUID,
		'bento.publishable_key'          => $PUBLISHABLE_KEY,
		'bento.secret_key'               => $SECRET_KEY,
		'bento.poll_interval'            => '100ms',
		'bento.retry_base_delay'         => '200ms',
		'bento.retry_max_delay'          => '5s',
		'bento.max_requests_per_minute'  => 0,
		%settings);

	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
	$node->append_conf('postgresql.conf', conf_lines(%conf));
	return $node if $no_start;

	$node->start;
	$node->safe_psql('postgres', 'CREATE EXTENSION bento') unless $no_extension;
	return $node;
}

sub conf_lines
{
	my (%conf) = @_;
	my $text = '';
	foreach my $key (sort keys %conf)
	{
		my $value = $conf{$key};
		next unless defined $value;
		$value = "'" . ($value =~ s/'/''/gr) . "'" unless $value =~ /^-?\d+$/;
		$text .= "$key = $value\n";
	}
	return $text;
}

=pod

=item set_conf($node, %settings)

Append settings to postgresql.conf and reload (later lines win).  An undef value writes ''.
By the time the next connection to the node is made the worker has been signalled.

=cut

sub set_conf
{
	my ($node, %settings) = @_;
	$settings{$_} //= '' foreach keys %settings;
	$node->append_conf('postgresql.conf', conf_lines(%settings));
	$node->reload;
	# Something that goes through the postmaster, so the SIGHUP has been passed on.
	$node->safe_psql('postgres', 'SELECT 1');
	return;
}

=pod

=item json_query($node, $sql [, $dbname])

Run a query and return its rows as an array ref of hash refs (column => value, NULL => undef).

=cut

sub json_query
{
	my ($node, $sql, $dbname) = @_;
	my $out = $node->safe_psql($dbname // 'postgres',
		"SELECT coalesce(json_agg(q), '[]'::json) FROM ($sql) q");
	return $JSON->decode($out);
}

=pod

=item sql_literal($value)

A quoted SQL literal; undef gives NULL; a reference is encoded as JSON and cast to jsonb.

=cut

sub sql_literal
{
	my ($value) = @_;
	return 'NULL' unless defined $value;
	my $is_json = ref $value;
	$value = $JSON->encode($value) if $is_json;
	my $literal = "'" . ($value =~ s/'/''/gr) . "'";
	return $is_json ? "${literal}::jsonb" : $literal;
}

=pod

=item track($node, @events [, { dbname => ..., rollback => 1 }])

Call bento_track() for each event (hash refs with type, email, fields, details, external_id,
occurred_at) in one transaction; return the ids.  A trailing hash ref holding C<dbname> or
C<rollback> is taken as options.

=cut

sub track
{
	my ($node, @events) = @_;
	my $opts = {};
	$opts = pop @events
	  if @events && (exists $events[-1]{dbname} || exists $events[-1]{rollback});

	my $sql = "BEGIN;\n";
	foreach my $e (@events)
	{
		my @args = (
			sql_literal($e->{type} // '$test'), sql_literal($e->{email}),
			sql_literal($e->{fields}),          sql_literal($e->{details}),
			sql_literal($e->{external_id}));
		push @args, sql_literal($e->{occurred_at}) . '::timestamptz'
		  if defined $e->{occurred_at};
		$sql .= 'SELECT bento_track(' . join(', ', @args) . ");\n";
	}
	$sql .= $opts->{rollback} ? "ROLLBACK;\n" : "COMMIT;\n";
	my $out = $node->safe_psql($opts->{dbname} // 'postgres', $sql);
	return split /\n/, $out;
}

=pod

=item delivery_mark($node), deliveries_after($node, $mark), rows_like($node, $prefix)

delivery_mark: the highest id in bento.deliveries, so that the deliveries after it belong to the
scenario that follows.  deliveries_after: those deliveries, oldest first, as hash refs.
rows_like: the outbox rows whose email starts with $prefix, in id order.

=cut

sub delivery_mark
{
	my ($node) = @_;
	return $node->safe_psql('postgres', 'SELECT coalesce(max(id), 0) FROM bento.deliveries');
}

sub deliveries_after
{
	my ($node, $mark) = @_;
	return json_query($node, "SELECT * FROM bento.deliveries WHERE id > $mark ORDER BY id");
}

sub rows_like
{
	my ($node, $prefix) = @_;
	return json_query($node,
		"SELECT * FROM bento.outbox WHERE email LIKE " . sql_literal("$prefix%") . " ORDER BY id");
}

=pod

=item wait_until($description, $code [, $timeout_seconds])

Call $code every 0.1 s until it returns true; returns its value, or undef (with a diag) after the
timeout (default: the TAP timeout, 180 s).

=cut

sub wait_until
{
	my ($desc, $code, $timeout) = @_;
	$timeout //= $PostgreSQL::Test::Utils::timeout_default;
	my $deadline = time + $timeout;
	while (1)
	{
		my $value = $code->();
		return $value if $value;
		if (time > $deadline)
		{
			diag("timed out after ${timeout}s waiting until $desc");
			return undef;
		}
		usleep(100_000);
	}
}

=pod

=item wait_sql($node, $sql, $description [, $dbname])

ok() once the boolean query $sql returns true (polls; survives a restarting server).

=cut

sub wait_sql
{
	my ($node, $sql, $desc, $dbname) = @_;
	return ok($node->poll_query_until($dbname // 'postgres', $sql), $desc);
}

=pod

=item wait_settled($node [, $description [, $dbname]])

Wait until no outbox row is pending or sending and no delivery is in flight.

=cut

sub wait_settled
{
	my ($node, $desc, $dbname) = @_;
	return wait_sql(
		$node, q{SELECT NOT EXISTS (SELECT 1 FROM bento.outbox WHERE status IN ('pending', 'sending'))
		           AND NOT EXISTS (SELECT 1 FROM bento.deliveries WHERE outcome = 'in_flight')},
		$desc // 'outbox settled', $dbname);
}

=pod

=item worker_pid($node)

The pid of the running bento worker, or undef.

=cut

sub worker_pid
{
	my ($node) = @_;
	my $pid = $node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'bento'");
	return $pid eq '' ? undef : $pid;
}

=pod

=item count_log_matches($node, $regex [, $offset])

How many lines of the server log (from byte $offset) match.

=cut

sub count_log_matches
{
	my ($node, $regex, $offset) = @_;
	my $log = slurp_file($node->logfile, $offset // 0);
	return scalar grep { /$regex/ } split /\n/, $log;
}

=pod

=item free_port()

A TCP port on 127.0.0.1 that nothing listens on (it was free a moment ago).

=cut

sub free_port
{
	my $sock = IO::Socket::INET->new(
		LocalAddr => '127.0.0.1',
		LocalPort => 0,
		Proto     => 'tcp',
		Listen    => 1) or die "cannot bind: $!";
	my $port = $sock->sockport;
	close $sock;
	return $port;
}

=pod

=item basic_auth($user, $password)

The value of an Authorization header for HTTP Basic auth.

=cut

sub basic_auth
{
	my ($user, $password) = @_;
	return 'Basic ' . encode_base64("$user:$password", '');
}

=pod

=item email_counts($events)

Hash ref email => number of times it is in the list of events.

=cut

sub email_counts
{
	my ($events) = @_;
	my %n;
	$n{ $_->{email} }++ foreach @$events;
	return \%n;
}

=pod

=item check_delivery_history($mock, \@emails, $label)

Check, from the mock's request log, that for every email: the last request that carried it was
answered 2xx with a complete response (so it was delivered: nothing lost), and no request carried
it after such an answer (the worker never re-sends what Bento confirmed).  Also checks that
the mock received each email at most once more than the number of requests that carried it
without a clean answer.  Returns true when all is well.

=cut

sub check_delivery_history
{
	my ($mock, $emails, $label) = @_;
	my (%carried, %received);
	foreach my $r (@{ $mock->requests })
	{
		my $events = ref $r->{body} eq 'HASH' ? $r->{body}{events} : undef;
		next unless ref $events eq 'ARRAY';
		foreach my $i (0 .. $#$events)
		{
			push @{ $carried{ $events->[$i]{email} } }, $r;
		}
	}
	$received{ $_->{email} }++ foreach @{ $mock->events };

	my @problems;
	foreach my $email (@$emails)
	{
		my $reqs = $carried{$email} // [];
		if (!@$reqs)
		{
			push @problems, "$email was never sent";
			next;
		}
		my $clean = sub {
			my $r = shift;
			return $r->{action} !~ /^(truncate|drop|abandoned|in_flight)$/
			  && defined $r->{status}
			  && $r->{status} >= 200
			  && $r->{status} < 300;
		};
		my @clean = grep { $clean->($reqs->[$_]) } 0 .. $#$reqs;
		if (!@clean)
		{
			push @problems, "$email never got a clean 2xx answer";
		}
		elsif ($clean[0] != $#$reqs)
		{
			push @problems,
			  "$email was sent again after a clean 2xx answer ("
			  . scalar(@$reqs) . " requests)";
		}
		my $unclean = scalar(@$reqs) - scalar(@clean);
		my $got = $received{$email} // 0;
		push @problems, "$email received $got times (max " . (1 + $unclean) . ")"
		  if $got > 1 + $unclean;
		push @problems, "$email not received by the mock" if $got == 0;
	}
	diag("$label: $_") foreach @problems[ 0 .. ($#problems > 9 ? 9 : $#problems) ];
	return ok(!@problems, "$label: every event delivered, nothing re-sent after a confirmed delivery");
}

=pod

=back

=cut

package BentoTest::Mock;

use strict;
use warnings;

use Carp;
use File::Spec;
use HTTP::Tiny;
use JSON::PP;
use POSIX ();
use Time::HiRes qw(usleep);

use PostgreSQL::Test::Utils;

my @all_mocks;

=pod

=head2 BentoTest::Mock

=over

=item BentoTest::Mock->start(%options)

Start the mock.  Options: C<publishable_key>, C<secret_key>, C<site_uuid> (default: the test
credentials and $SITE_UUID; pass undef to turn a check off), C<name> (for the log file name).
Its stderr goes to tmp_check/log/mock_NAME.log.

=cut

sub start
{
	my ($class, %opts) = @_;
	my $name = $opts{name} // 'bento';
	my %check = (
		publishable_key => $BentoTest::PUBLISHABLE_KEY,
		secret_key      => $BentoTest::SECRET_KEY,
		site_uuid       => $BentoTest::SITE_UUID,
		%opts);

	my $dir       = PostgreSQL::Test::Utils::tempdir("mock_$name");
	my $port_file = "$dir/port";
	my $log_file  = "$PostgreSQL::Test::Utils::log_path/mock_$name.log";
	my $python    = -x '/usr/bin/python3' ? '/usr/bin/python3' : 'python3';
	my @cmd       = ($python, "$ROOT/mock/bento_mock.py", '--host', '127.0.0.1',
		'--port', '0', '--port-file', $port_file, '--quiet');
	push @cmd, '--publishable-key', $check{publishable_key}, '--secret-key', $check{secret_key}
	  if defined $check{publishable_key};
	push @cmd, '--site-uuid', $check{site_uuid} if defined $check{site_uuid};

	my $pid = fork();
	croak "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		open(STDOUT, '>>', $log_file) or POSIX::_exit(127);
		open(STDERR, '>>', $log_file) or POSIX::_exit(127);
		exec(@cmd) or POSIX::_exit(127);
	}

	my $self = bless { pid => $pid, name => $name, http => HTTP::Tiny->new(timeout => 60) },
	  $class;
	push @all_mocks, $self;

	my $deadline = time + 30;
	until (-s $port_file)
	{
		if (waitpid($pid, POSIX::WNOHANG()) == $pid || time > $deadline)
		{
			delete $self->{pid};
			croak "the mock server did not start; see $log_file";
		}
		usleep(20_000);
	}
	$self->{port} = slurp_file($port_file) =~ s/\s+//gr;
	$self->{base} = "http://127.0.0.1:$self->{port}";
	Test::More::note("mock $name listening on port $self->{port} (pid $pid)");
	return $self;
}

=item $mock->port, $mock->base, $mock->api_url

The port, http://127.0.0.1:PORT, and http://127.0.0.1:PORT/api/v1 (the value for bento.api_url).

=cut

sub port    { return $_[0]{port} }
sub base    { return $_[0]{base} }
sub api_url { return "$_[0]{base}/api/v1" }

sub call
{
	my ($self, $method, $path, $data) = @_;
	my %args;
	if (defined $data)
	{
		$args{content} = JSON::PP->new->utf8->canonical->encode($data);
		$args{headers} = { 'Content-Type' => 'application/json' };
	}
	my $res = $self->{http}->request($method, "$self->{base}$path", \%args);
	croak "mock $method $path: $res->{status} $res->{reason} $res->{content}"
	  unless $res->{success};
	return JSON::PP->new->utf8->decode($res->{content});
}

=item $mock->get($path), $mock->post($path [, $data])

Call a control endpoint; returns the decoded JSON answer (dies on a non-2xx).

=cut

sub get  { my ($self, $path) = @_; return $self->call('GET', $path) }
sub post { my ($self, $path, $data) = @_; return $self->call('POST', $path, $data // {}) }

=item $mock->script(@steps)

Queue scripted answers (hash refs, see the mock's docstring).  Booleans may be given as 1.

=cut

sub script
{
	my ($self, @steps) = @_;
	foreach my $step (@steps)
	{
		foreach my $key (qw(hang drop truncate record))
		{
			$step->{$key} = $step->{$key} ? JSON::PP::true : JSON::PP::false
			  if exists $step->{$key};
		}
	}
	return $self->post('/_mock/script', \@steps);
}

=item $mock->requests, $mock->events, $mock->stats, $mock->reset, $mock->release

The control endpoints.  requests() takes an optional query string, e.g. 'bodies=0'.

=cut

sub requests { my ($self, $q) = @_; return $self->get('/_mock/requests' . ($q ? "?$q" : '')) }
sub events   { return $_[0]->get('/_mock/events') }
sub stats    { return $_[0]->get('/_mock/stats') }
sub reset    { return $_[0]->post('/_mock/reset') }
sub release  { return $_[0]->post('/_mock/release') }

=item $mock->wait_in_flight($n)

Wait until exactly $n requests are being processed (e.g. hung); true on success.

=cut

sub wait_in_flight
{
	my ($self, $n) = @_;
	return BentoTest::wait_until("the mock has $n request(s) in flight",
		sub { $self->stats->{in_flight} == $n });
}

=item $mock->wait_requests($n)

Wait until the mock has answered (or given up on) at least $n requests; returns them.

=cut

sub wait_requests
{
	my ($self, $n) = @_;
	my $reqs;
	BentoTest::wait_until(
		"the mock has finished $n request(s)",
		sub {
			$reqs = $self->requests('bodies=0');
			return (grep { $_->{action} ne 'in_flight' } @$reqs) >= $n;
		});
	return $self->requests;
}

=item $mock->stop

Stop the mock (also done for every mock when the test ends).

=cut

sub stop
{
	my ($self) = @_;
	my $pid = delete $self->{pid};
	return unless $pid;
	kill 'TERM', $pid;
	my $deadline = time + 10;
	while (waitpid($pid, POSIX::WNOHANG()) == 0)
	{
		if (time > $deadline)
		{
			kill 'KILL', $pid;
			waitpid($pid, 0);
			last;
		}
		usleep(20_000);
	}
	return;
}

END
{
	my $status = $?;
	$_->stop foreach @all_mocks;
	$? = $status;
}

=pod

=back

=cut

1;
