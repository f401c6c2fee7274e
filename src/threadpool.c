/* threadpool.c - persistent pthread workers for parallel-for (see threadpool.h).
 *
 * One job at a time: the caller publishes (fn, ctx, n, grain), bumps a
 * generation counter and wakes the workers; everyone (caller included) pulls
 * ranges from an atomic cursor until [0, n) is exhausted; the caller waits
 * until every worker has checked out of the generation.
 */
#include "threadpool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>

struct ds4_pool {
    int n_threads;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    uint64_t generation;
    int busy; /* workers still inside the current generation */
    bool stop;
    /* current job */
    ds4_pool_fn fn;
    void *ctx;
    int64_t n, chunk;
    atomic_int_fast64_t cursor;
};

typedef struct {
    ds4_pool *pool;
    int index;
} worker_arg;

static void drain(ds4_pool *p, int worker) {
    for (;;) {
        int64_t b = atomic_fetch_add(&p->cursor, p->chunk);
        if (b >= p->n) return;
        int64_t e = b + p->chunk < p->n ? b + p->chunk : p->n;
        p->fn(p->ctx, b, e, worker);
    }
}

static void *worker_main(void *arg) {
    worker_arg *wa = arg;
    ds4_pool *p = wa->pool;
    int index = wa->index;
    free(wa);
    uint64_t seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && p->generation == seen) pthread_cond_wait(&p->wake, &p->mu);
        if (p->stop) break;
        seen = p->generation;
        pthread_mutex_unlock(&p->mu);
        drain(p, index);
        pthread_mutex_lock(&p->mu);
        if (--p->busy == 0) pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
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
    p->stop = true;
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
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->n = n;
    p->chunk = chunk;
    atomic_store(&p->cursor, 0);
    p->busy = p->n_threads - 1;
    p->generation++;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    drain(p, 0);
    pthread_mutex_lock(&p->mu);
    while (p->busy > 0) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
