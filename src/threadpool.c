/* threadpool.c - persistent pthread workers for parallel-for (see threadpool.h).
 *
 * One job at a time: the caller publishes (fn, ctx, n, chunk), bumps an atomic
 * generation counter; everyone (caller included) pulls ranges from an atomic
 * cursor until [0, n) is exhausted; the caller waits until every worker has
 * checked out of the generation.
 *
 * Decode runs hundreds of small parallel loops per token, so handing a job
 * over must cost microseconds, not a futex round trip: idle workers first
 * spin on the generation counter for a while (DS4_POOL_SPIN_US) and only then
 * sleep on a condition variable; the caller spins on the busy count the same
 * way. A pool of 1 thread runs everything inline with no synchronisation.
 */
#include "threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield")
#else
#define cpu_relax() ((void)0)
#endif

#define DS4_POOL_SPIN_US 200 /* how long an idle thread spins before sleeping */

struct ds4_pool {
    int n_threads;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    atomic_uint_fast64_t generation;
    atomic_int busy;     /* workers still inside the current generation */
    atomic_int sleepers; /* workers blocked on `wake` */
    atomic_bool stop;
    /* current job (written before generation is bumped) */
    ds4_pool_fn fn;
    void *ctx;
    int64_t n, chunk;
    atomic_int_fast64_t cursor;
};

typedef struct {
    ds4_pool *pool;
    int index;
} worker_arg;

static uint64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void drain(ds4_pool *p, int worker) {
    for (;;) {
        int64_t b = atomic_fetch_add(&p->cursor, p->chunk);
        if (b >= p->n) return;
        int64_t e = b + p->chunk < p->n ? b + p->chunk : p->n;
        p->fn(p->ctx, b, e, worker);
    }
}

/* Waits until the generation moves past `seen` (or stop); returns the new one. */
static uint64_t wait_generation(ds4_pool *p, uint64_t seen) {
    uint64_t start = now_us();
    for (unsigned spins = 0;; spins++) {
        uint64_t g = atomic_load_explicit(&p->generation, memory_order_acquire);
        if (g != seen || atomic_load(&p->stop)) return g;
        cpu_relax();
        if ((spins & 255) == 255) {
            if (now_us() - start > DS4_POOL_SPIN_US) break;
            sched_yield(); /* let a working thread have this core if cores are oversubscribed */
        }
    }
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add(&p->sleepers, 1);
    uint64_t g;
    while ((g = atomic_load(&p->generation)) == seen && !atomic_load(&p->stop)) pthread_cond_wait(&p->wake, &p->mu);
    atomic_fetch_sub(&p->sleepers, 1);
    pthread_mutex_unlock(&p->mu);
    return g;
}

static void *worker_main(void *arg) {
    worker_arg *wa = arg;
    ds4_pool *p = wa->pool;
    int index = wa->index;
    free(wa);
    uint64_t seen = 0;
    for (;;) {
        seen = wait_generation(p, seen);
        if (atomic_load(&p->stop)) break;
        drain(p, index);
        if (atomic_fetch_sub_explicit(&p->busy, 1, memory_order_acq_rel) == 1) {
            /* last one out: wake the caller if it went to sleep */
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
    return NULL;
}

ds4_pool *ds4_pool_new(int n_threads) {
    if (n_threads < 1) n_threads = 1;
    ds4_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n_threads = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    p->threads = calloc((size_t)n_threads, sizeof(pthread_t));
    for (int i = 1; i < n_threads; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        wa->pool = p;
        wa->index = i;
        if (pthread_create(&p->threads[i], NULL, worker_main, wa) != 0) {
            free(wa);
            p->n_threads = i; /* run with what we have */
            break;
        }
    }
    return p;
}

void ds4_pool_free(ds4_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, true);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n_threads; i++) pthread_join(p->threads[i], NULL);
    free(p->threads);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done);
    free(p);
}

int ds4_pool_size(const ds4_pool *p) { return p ? p->n_threads : 1; }

void ds4_pool_run(ds4_pool *p, int64_t n, int64_t grain, ds4_pool_fn fn, void *ctx) {
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    if (!p || p->n_threads == 1 || n <= grain) {
        fn(ctx, 0, n, 0);
        return;
    }
    /* about 4 ranges per thread, never below the grain */
    int64_t chunk = n / ((int64_t)p->n_threads * 4);
    if (chunk < grain) chunk = grain;
    p->fn = fn;
    p->ctx = ctx;
    p->n = n;
    p->chunk = chunk;
    atomic_store(&p->cursor, 0);
    atomic_store(&p->busy, p->n_threads - 1);
    atomic_fetch_add(&p->generation, 1); /* seq_cst: pairs with the sleepers check below */
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->mu);
    }
    drain(p, 0);
    uint64_t start = now_us();
    for (unsigned spins = 0; atomic_load_explicit(&p->busy, memory_order_acquire) > 0; spins++) {
        cpu_relax();
        if ((spins & 255) == 255) sched_yield();
        if ((spins & 255) == 255 && now_us() - start > DS4_POOL_SPIN_US) {
            pthread_mutex_lock(&p->mu);
            while (atomic_load(&p->busy) > 0) pthread_cond_wait(&p->done, &p->mu);
            pthread_mutex_unlock(&p->mu);
            break;
        }
    }
}
