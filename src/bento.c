/*-------------------------------------------------------------------------
 *
 * bento.c
 *	  Module entry point: settings, shared memory and the background worker.
 *
 * The reloadable settings are defined in every process that loads the
 * library.  Shared memory and the worker exist only when the library is in
 * shared_preload_libraries; bento_track() still works without them, the
 * events simply wait until a worker runs.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/guc.h"

#include "bento.h"
#include "compat.h"

PG_MODULE_MAGIC;

BentoSharedState *bento_shared = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

void		_PG_init(void);

/*
 * Ask for the shared memory the worker's state needs.
 */
static void
bento_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();

	RequestAddinShmemSpace(MAXALIGN(sizeof(BentoSharedState)));
}

/*
 * Create or attach to the shared state.
 */
static void
bento_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	bento_shared = ShmemInitStruct("bento", sizeof(BentoSharedState), &found);
	if (!found)
	{
		bento_shared->worker_latch = NULL;
		bento_shared->worker_pid = 0;
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * Wake the worker, if one runs.  Called at commit of a transaction that
 * queued events, so that delivery starts without waiting for the poll.
 */
void
bento_wake_worker(void)
{
	Latch	   *latch;

	if (bento_shared == NULL)
		return;

	/* A stale pointer is harmless: latches live in PGPROC, never freed. */
	latch = bento_shared->worker_latch;
	if (latch != NULL)
		SetLatch(latch);
}

void
_PG_init(void)
{
	bento_define_gucs();

	if (!process_shared_preload_libraries_in_progress)
		return;

	MarkGUCPrefixReserved("bento");

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = bento_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = bento_shmem_startup;

	/* pg_upgrade starts the server with no worker wanted (as pg_cron does). */
	if (IsBinaryUpgrade)
		return;

	bento_register_worker();
}
