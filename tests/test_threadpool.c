/* test_threadpool.c - the parallel-for pool: every index visited exactly once,
 * for many pool sizes, grains and (tiny) job sizes, across many back-to-back
 * jobs (the spin/sleep hand-over must never lose a wake-up). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "threadpool.h"

typedef struct {
    atomic_int *hits;
    atomic_int max_worker;
} visit_ctx;

static void visit(void *vctx, int64_t b, int64_t e, int worker) {
    visit_ctx *c = vctx;
    for (int64_t i = b; i < e; i++) atomic_fetch_add(&c->hits[i], 1);
    int m = atomic_load(&c->max_worker);
    while (worker > m && !atomic_compare_exchange_weak(&c->max_worker, &m, worker)) {}
}

static void test_every_index_once(void **state) {
    (void)state;
    for (int threads = 1; threads <= 5; threads++) {
        ds4_pool *p = ds4_pool_new(threads);
        assert_int_equal(ds4_pool_size(p), threads);
        const int64_t sizes[] = {1, 2, 3, 7, 64, 1000, 4097};
        for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
            for (int64_t grain = 1; grain <= 64; grain *= 8) {
                int64_t n = sizes[si];
                visit_ctx c = {calloc((size_t)n, sizeof(atomic_int)), 0};
                ds4_pool_run(p, n, grain, visit, &c);
                for (int64_t i = 0; i < n; i++) assert_int_equal(atomic_load(&c.hits[i]), 1);
                assert_true(atomic_load(&c.max_worker) < threads);
                free(c.hits);
            }
        }
        ds4_pool_free(p);
    }
}

static void add_one(void *vctx, int64_t b, int64_t e, int worker) {
    (void)worker;
    atomic_fetch_add((atomic_long *)vctx, e - b);
}

/* Many tiny jobs back to back, with pauses that let workers fall asleep. */
static void test_handover_stress(void **state) {
    (void)state;
    ds4_pool *p = ds4_pool_new(3);
    atomic_long total = 0;
    long want = 0;
    for (int i = 0; i < 20000; i++) {
        int64_t n = 1 + i % 17;
        ds4_pool_run(p, n, 1, add_one, &total);
        want += n;
        if (i % 2000 == 0) usleep(2000); /* longer than the spin: workers sleep */
    }
    assert_int_equal(atomic_load(&total), want);
    ds4_pool_free(p);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_index_once),
        cmocka_unit_test(test_handover_stress),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
