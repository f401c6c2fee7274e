/* toolmem.c - tool memory: a bounded map from tool-call id to the exact text
 * the model generated for the assistant turn that made the call.
 *
 * Clients send tool calls back as (name, arguments JSON); rendering those
 * canonically rarely gives the bytes the model sampled (parameter order,
 * whitespace, string="false" spelling, dropped reasoning), and one different
 * byte ends the reusable KV prefix there. With this map the renderer replays
 * the turn byte for byte, so the live session still matches.
 *
 * A hash table (chaining) for lookups plus a FIFO list of insertion order:
 * when the map holds max_ids ids the oldest goes first. The ids of one turn
 * share one reference-counted text. Thread safe (one mutex). With a disk KV
 * cache, every new entry is also appended to its tool log (kvdisk.c), so
 * replay survives restarts.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "server.h"

typedef struct {
    int refs;
    bool thinking;
    size_t len;
    char text[];
} tm_text;

typedef struct tm_entry {
    char *id;
    tm_text *t;
    struct tm_entry *chain;        /* hash bucket */
    struct tm_entry *older, *newer; /* FIFO */
} tm_entry;

struct srv_toolmem {
    pthread_mutex_t mu;
    size_t max_ids, count, n_buckets;
    tm_entry **buckets;
    tm_entry *oldest, *newest;
    void (*persist)(void *ud, const char *const *ids, size_t n_ids, const char *text, size_t len, bool thinking);
    void *persist_ud;
};

static uint64_t hash_str(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

srv_toolmem *toolmem_new(size_t max_ids) {
    srv_toolmem *tm = calloc(1, sizeof *tm);
    pthread_mutex_init(&tm->mu, NULL);
    tm->max_ids = max_ids ? max_ids : 1;
    tm->n_buckets = 1024;
    while (tm->n_buckets < tm->max_ids && tm->n_buckets < (1u << 20)) tm->n_buckets *= 2;
    tm->buckets = calloc(tm->n_buckets, sizeof *tm->buckets);
    return tm;
}

static void text_unref(tm_text *t) {
    if (t && --t->refs == 0) free(t);
}

static void unlink_entry(srv_toolmem *tm, tm_entry *e) {
    tm_entry **pp = &tm->buckets[hash_str(e->id) & (tm->n_buckets - 1)];
    while (*pp && *pp != e) pp = &(*pp)->chain;
    if (*pp) *pp = e->chain;
    if (e->older) e->older->newer = e->newer; else tm->oldest = e->newer;
    if (e->newer) e->newer->older = e->older; else tm->newest = e->older;
    tm->count--;
    text_unref(e->t);
    free(e->id);
    free(e);
}

void toolmem_free(srv_toolmem *tm) {
    if (!tm) return;
    while (tm->oldest) unlink_entry(tm, tm->oldest);
    free(tm->buckets);
    pthread_mutex_destroy(&tm->mu);
    free(tm);
}

static tm_entry *find(srv_toolmem *tm, const char *id) {
    for (tm_entry *e = tm->buckets[hash_str(id) & (tm->n_buckets - 1)]; e; e = e->chain)
        if (!strcmp(e->id, id)) return e;
    return NULL;
}

void toolmem_put(srv_toolmem *tm, const char *const *ids, size_t n_ids, const char *text, size_t len, bool thinking) {
    toolmem_load(tm, ids, n_ids, text, len, thinking);
    pthread_mutex_lock(&tm->mu);
    if (tm->persist) tm->persist(tm->persist_ud, ids, n_ids, text, len, thinking);
    pthread_mutex_unlock(&tm->mu);
}

void toolmem_load(srv_toolmem *tm, const char *const *ids, size_t n_ids, const char *text, size_t len, bool thinking) {
    if (!n_ids) return;
    tm_text *t = malloc(sizeof *t + len + 1);
    if (!t) return;
    t->refs = 0;
    t->thinking = thinking;
    t->len = len;
    memcpy(t->text, text, len);
    t->text[len] = 0;
    pthread_mutex_lock(&tm->mu);
    for (size_t i = 0; i < n_ids; i++) {
        if (!ids[i] || !ids[i][0]) continue;
        tm_entry *old = find(tm, ids[i]);
        if (old) unlink_entry(tm, old);
        while (tm->count >= tm->max_ids && tm->oldest) unlink_entry(tm, tm->oldest);
        tm_entry *e = calloc(1, sizeof *e);
        e->id = strdup(ids[i]);
        e->t = t;
        t->refs++;
        size_t b = hash_str(e->id) & (tm->n_buckets - 1);
        e->chain = tm->buckets[b];
        tm->buckets[b] = e;
        e->older = tm->newest;
        if (tm->newest) tm->newest->newer = e; else tm->oldest = e;
        tm->newest = e;
        tm->count++;
    }
    if (t->refs == 0) free(t);
    pthread_mutex_unlock(&tm->mu);
}

char *toolmem_get(srv_toolmem *tm, const char *id, size_t *len, bool *thinking) {
    if (!tm || !id) return NULL;
    char *r = NULL;
    pthread_mutex_lock(&tm->mu);
    tm_entry *e = find(tm, id);
    if (e && (r = malloc(e->t->len + 1))) {
        memcpy(r, e->t->text, e->t->len + 1);
        *len = e->t->len;
        *thinking = e->t->thinking;
    }
    pthread_mutex_unlock(&tm->mu);
    return r;
}

size_t toolmem_count(srv_toolmem *tm) {
    pthread_mutex_lock(&tm->mu);
    size_t n = tm->count;
    pthread_mutex_unlock(&tm->mu);
    return n;
}

void toolmem_set_persist(srv_toolmem *tm, void (*cb)(void *ud, const char *const *ids, size_t n_ids,
                                                     const char *text, size_t len, bool thinking), void *ud) {
    pthread_mutex_lock(&tm->mu);
    tm->persist = cb;
    tm->persist_ud = ud;
    pthread_mutex_unlock(&tm->mu);
}
