/* threadpool.h - a fixed pool of worker threads running parallel-for loops.
 *
 * ds4_pool_run(pool, n, fn, ctx) calls fn(ctx, begin, end, worker) over a
 * partition of [0, n) into contiguous ranges, using the calling thread as one
 * of the workers, and returns when every range is done. Ranges are handed out
 * dynamically in chunks, so uneven work (attention rows of growing length,
 * experts with different token counts) still balances. A pool of 1 thread runs
 * everything inline with no synchronisation.
 */
#ifndef DS4_THREADPOOL_H
#define DS4_THREADPOOL_H

#include <stdint.h>

typedef struct ds4_pool ds4_pool;
typedef void (*ds4_pool_fn)(void *ctx, int64_t begin, int64_t end, int worker);

ds4_pool *ds4_pool_new(int n_threads); /* n_threads >= 1, including the caller */
void ds4_pool_free(ds4_pool *pool);
int ds4_pool_size(const ds4_pool *pool);
/* grain: minimum items per handed-out range (>= 1). */
void ds4_pool_run(ds4_pool *pool, int64_t n, int64_t grain, ds4_pool_fn fn, void *ctx);

#endif
