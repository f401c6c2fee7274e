/* util.c - see util.h. */
#include "util.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "server.h"
#include "tokenizer.h"

static void oom(void) {
    fputs("ds4-server: out of memory\n", stderr);
    abort();
}

void sb_put(sbuf *b, const void *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 256;
        while (nc < b->n + n + 1) nc *= 2;
        char *q = realloc(b->p, nc);
        if (!q) oom();
        b->p = q;
        b->cap = nc;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

void sb_puts(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

void sb_printf(sbuf *b, const char *fmt, ...) {
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof tmp) {
        sb_put(b, tmp, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big) oom();
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    sb_put(b, big, (size_t)n);
    free(big);
}

void sb_free(sbuf *b) {
    free(b->p);
    memset(b, 0, sizeof *b);
}

char *sb_take(sbuf *b) {
    char *p = b->p;
    if (!p) {
        p = calloc(1, 1);
        if (!p) oom();
    }
    memset(b, 0, sizeof *b);
    return p;
}

void *ar_own(arena *a, void *p) {
    if (!p) oom();
    if (a->n == a->cap) {
        size_t nc = a->cap ? a->cap * 2 : 32;
        void **q = realloc(a->p, nc * sizeof *q);
        if (!q) oom();
        a->p = q;
        a->cap = nc;
    }
    a->p[a->n++] = p;
    return p;
}

void *ar_alloc(arena *a, size_t n) { return ar_own(a, calloc(1, n ? n : 1)); }

char *ar_strndup(arena *a, const char *s, size_t n) {
    char *p = ar_own(a, malloc(n + 1));
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}

char *ar_strdup(arena *a, const char *s) { return s ? ar_strndup(a, s, strlen(s)) : NULL; }

void ar_free(arena *a) {
    for (size_t i = 0; i < a->n; i++) free(a->p[i]);
    free(a->p);
    memset(a, 0, sizeof *a);
}

double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

long long wall_s(void) { return (long long)time(NULL); }

static pthread_mutex_t rng_mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t rng_state;

static uint64_t rng_next(void) {
    if (!rng_state) {
        uint64_t seed = 0;
        int fd = open("/dev/urandom", O_RDONLY);
        if (fd >= 0) {
            if (read(fd, &seed, sizeof seed) != sizeof seed) seed = 0;
            close(fd);
        }
        rng_state = seed ^ (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32) ^ 0x9E3779B97F4A7C15ull;
        if (!rng_state) rng_state = 1;
    }
    uint64_t x = rng_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * 0x2545F4914F6CDD1Dull;
}

void random_id(char *out, size_t outlen, const char *prefix, int nbytes) {
    static const char hex[] = "0123456789abcdef";
    size_t pl = strlen(prefix);
    if (outlen < pl + 2 * (size_t)nbytes + 1) {
        if (outlen) out[0] = 0;
        return;
    }
    memcpy(out, prefix, pl);
    pthread_mutex_lock(&rng_mu);
    for (int i = 0; i < nbytes; i++) {
        unsigned v = (unsigned)(rng_next() >> 56);
        out[pl + 2 * i] = hex[v >> 4];
        out[pl + 2 * i + 1] = hex[v & 15];
    }
    pthread_mutex_unlock(&rng_mu);
    out[pl + 2 * (size_t)nbytes] = 0;
}

int srv_log_quiet;
static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;

void srv_log(const char *fmt, ...) {
    if (srv_log_quiet) return;
    char ts[32];
    time_t t = time(NULL);
    struct tm tm;
    localtime_r(&t, &tm);
    strftime(ts, sizeof ts, "%Y-%m-%d %H:%M:%S", &tm);
    pthread_mutex_lock(&log_mu);
    fprintf(stderr, "%s ", ts);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
    pthread_mutex_unlock(&log_mu);
}

const cJSON *jget(const cJSON *o, const char *key) {
    if (!cJSON_IsObject(o)) return NULL;
    return cJSON_GetObjectItemCaseSensitive(o, key);
}

const char *jstr(const cJSON *o, const char *key) {
    const cJSON *v = jget(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

char *jtext(arena *a, const cJSON *v, bool *bad) {
    if (!v || cJSON_IsNull(v)) return NULL;
    if (cJSON_IsString(v)) return ar_strdup(a, v->valuestring);
    if (!cJSON_IsArray(v)) {
        *bad = true;
        return NULL;
    }
    sbuf b = {0};
    const cJSON *it;
    cJSON_ArrayForEach(it, v) {
        if (cJSON_IsString(it)) {
            sb_puts(&b, it->valuestring);
            continue;
        }
        const char *type = jstr(it, "type"), *text = jstr(it, "text");
        if (!cJSON_IsObject(it) || (type && strcmp(type, "text") && strcmp(type, "input_text") &&
                                    strcmp(type, "output_text"))) {
            if (type && (!strcmp(type, "image") || !strcmp(type, "image_url") || !strcmp(type, "input_image"))) {
                sb_puts(&b, "[image omitted: this model reads text only]");
                continue;
            }
            *bad = true;
            sb_free(&b);
            return NULL;
        }
        if (!text) {
            *bad = true;
            sb_free(&b);
            return NULL;
        }
        sb_puts(&b, text);
    }
    return ar_own(a, sb_take(&b));
}

char *jprint(arena *a, const cJSON *v) { return ar_own(a, cJSON_PrintUnformatted(v)); }

char *utf8_sanitize(const char *s, size_t n, size_t *outlen) {
    ds4_utf8_stream st;
    ds4_utf8_stream_init(&st, true);
    char *out = malloc(4 * n + 16);
    if (!out) oom();
    size_t k = ds4_utf8_stream_feed(&st, s, n, out);
    k += ds4_utf8_stream_flush(&st, out + k);
    out[k] = 0;
    if (outlen) *outlen = k;
    return out;
}

cJSON *jadd_strn(cJSON *o, const char *key, const char *s, size_t len) {
    char *t = utf8_sanitize(s ? s : "", s ? len : 0, NULL);
    cJSON *r = cJSON_AddStringToObject(o, key, t);
    free(t);
    return r;
}

/* ---- --trace ---- */

static FILE *trace_fp;
static pthread_mutex_t trace_mu = PTHREAD_MUTEX_INITIALIZER;

void trace_open(const char *path) {
    trace_fp = fopen(path, "a");
    if (!trace_fp) srv_log("--trace %s: cannot open", path);
}

void trace_write(const char *job_id, const char *what, const char *text, size_t len) {
    if (!trace_fp) return;
    pthread_mutex_lock(&trace_mu);
    fprintf(trace_fp, "=== %s %s (%zu bytes)\n", job_id, what, len);
    fwrite(text, 1, len, trace_fp);
    fputs("\n", trace_fp);
    fflush(trace_fp);
    pthread_mutex_unlock(&trace_mu);
}
