/*-------------------------------------------------------------------------
 *
 * bento.h
 *	  Declarations shared by the files of the bento extension.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BENTO_H
#define BENTO_H

#include "postgres.h"

#include "executor/spi.h"
#include "storage/latch.h"
#include "utils/timestamp.h"

#ifndef BENTO_VERSION
#define BENTO_VERSION "1.0"
#endif

#define BENTO_USER_AGENT "bento-postgres/" BENTO_VERSION

/* Bento accepts at most this many events per request. */
#define BENTO_MAX_BATCH_SIZE 1000

/*
 * The largest event bento_track() accepts, counting the stored size of type,
 * email, fields, details and external_id.  Documented in the README.
 */
#define BENTO_MAX_EVENT_BYTES (64 * 1024)

/* The longest external_id: it must fit in a btree index entry. */
#define BENTO_MAX_EXTERNAL_ID_BYTES 1024

/* How much of a response body is kept (deliveries.response_body). */
#define BENTO_MAX_RESPONSE_BYTES (8 * 1024)

/* How much of a response body is read at all; a longer one is cut off. */
#define BENTO_MAX_READ_BYTES (64 * 1024)

/* Bento lists at most this many rejected events per response. */
#define BENTO_MAX_ITEMIZED_ERRORS 20

/* guc.c */
extern char *bento_api_url;
extern char *bento_site_uuid;
extern char *bento_publishable_key;
extern char *bento_secret_key;
extern char *bento_secret_key_file;
extern char *bento_database;
extern int	bento_batch_size;
extern int	bento_max_requests_per_minute;
extern int	bento_request_timeout;
extern int	bento_poll_interval;
extern int	bento_retry_base_delay;
extern int	bento_retry_max_delay;
extern int	bento_max_attempts;
extern int	bento_max_retry_age;
extern int	bento_retention;
extern int	bento_dedupe_window;

extern void bento_define_gucs(void);

/* retry.c: the retry schedule */
#define BENTO_RETRY_JITTER 0.25
extern double bento_backoff_ms(int attempts, double jitter);
extern double bento_random_jitter(void);

/* bento.c: state shared between backends and the worker */
typedef struct BentoSharedState
{
	Latch	   *worker_latch;	/* the running worker's latch, or NULL */
	pid_t		worker_pid;
} BentoSharedState;

extern BentoSharedState *bento_shared;
extern void bento_wake_worker(void);

/* worker.c */
extern PGDLLEXPORT void bento_worker_main(Datum main_arg);
extern void bento_register_worker(void);

/* http.c */
typedef struct BentoHttpResult
{
	long		http_status;	/* 0 when no status line arrived */
	int			curl_code;		/* CURLcode; 0 is CURLE_OK */
	char		error[256];		/* curl's error text when curl_code != 0 */
	char	   *body;			/* response body, NUL-terminated, capped */
	size_t		body_len;
	bool		body_truncated; /* more arrived than was kept */
	bool		body_overflow;	/* reading stopped at BENTO_MAX_READ_BYTES;
								 * the status line is still valid */
	double		duration_ms;
	int			retry_after_ms; /* Retry-After in ms, or -1 when absent */
	bool		aborted;		/* stopped because of shutdown or postmaster
								 * death */
	bool		request_sent;	/* the request body left this process */
} BentoHttpResult;

extern void bento_http_init(void);
extern const char *bento_http_url_problem(const char *url);
extern void bento_http_post_batch(const char *body, size_t body_len,
								  const char *secret, BentoHttpResult *result);

/* payload.c */
typedef struct BentoBatchEvent
{
	int64		id;
	char	   *type;
	char	   *email;
	char	   *fields;			/* JSON text or NULL */
	char	   *details;		/* JSON text or NULL */
	char	   *date;			/* ISO 8601 UTC */
} BentoBatchEvent;

typedef struct BentoResponse
{
	bool		parsed;			/* body was a JSON object */
	int			results;		/* -1 when absent */
	int			failed;			/* -1 when absent */
	int			nerrors;
	int		   *error_index;	/* positions in the posted array */
	char	  **error_text;
	char	   *error;			/* top-level "error" string, or NULL */
} BentoResponse;

extern char *bento_build_batch_body(BentoBatchEvent *events, int nevents,
									size_t *len);
extern void bento_parse_response(const char *body, BentoResponse *response);
extern char *bento_sanitize_excerpt(const char *body, size_t len, size_t max,
									 bool single_line);

/* What the worker decided about a finished request. */
typedef enum BentoOutcome
{
	BENTO_OUTCOME_DELIVERED,	/* 2xx, every event accepted */
	BENTO_OUTCOME_PARTIAL,		/* 2xx, the events in errors[] rejected */
	BENTO_OUTCOME_REJECTED,		/* the whole batch refused for good */
	BENTO_OUTCOME_SPLIT,		/* 400 for a batch: send its events again in
								 * smaller batches to isolate the bad ones */
	BENTO_OUTCOME_RETRY,		/* not accepted; send again later */
	BENTO_OUTCOME_UNKNOWN		/* may or may not have been accepted; send
								 * again later */
} BentoOutcome;

typedef struct BentoDecision
{
	BentoOutcome outcome;
	char	   *label;			/* what happened: "HTTP 503", "request failed" */
	char	   *excerpt;		/* Bento's words or the transport error */
	char	   *row_error;		/* "label: excerpt", last_error for rows not
								 * given their own */
	bool		counts_attempt; /* requeued rows: the attempt counts toward
								 * bento.max_attempts */
	bool		backoff;		/* requeued rows: wait per the schedule */
	int			retry_after_ms; /* requeued rows: wait at least this long */
	double		jitter;			/* requeued rows and the sender's pause: one
								 * draw for the whole batch, so that its
								 * events come back together */
	bool		unitemized;		/* Bento reported failures it did not list */
} BentoDecision;

/* outbox.c */
typedef struct BentoBatch
{
	int64		delivery_id;
	int			nevents;
	BentoBatchEvent *events;
} BentoBatch;

extern SPIPlanPtr bento_keep_plan(const char *sql, int nargs, Oid *argtypes,
								  int cursor_options);
extern int64 bento_enqueue(Datum *values, bool *nulls);
extern void bento_recover_in_flight(void);
extern void bento_claim_batch(int limit, int64 max_id, BentoBatch *batch,
							  MemoryContext cxt);
extern uint64 bento_purge_batch(int which, int limit);

#define BENTO_PURGE_SENT 0
#define BENTO_PURGE_DELIVERIES 1
#define BENTO_PURGE_DEDUPE 2
extern void bento_record_result(BentoBatch *batch, BentoHttpResult *http,
								BentoResponse *response,
								BentoDecision *decision);

#endif							/* BENTO_H */
