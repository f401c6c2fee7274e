/* util.h - small helpers shared by the server's files: a growable byte
 * buffer, a per-request string arena, monotonic/wall time, random hex ids,
 * logging, and cJSON accessors that never trust the client's types.
 */
#ifndef DS4S_UTIL_H
#define DS4S_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

/* ---- growable buffer (always NUL-terminated once non-empty) ---- */
typedef struct {
    char *p;
    size_t n, cap;
} sbuf;

void sb_put(sbuf *b, const void *s, size_t n);
void sb_puts(sbuf *b, const char *s);
void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sb_free(sbuf *b);
/* Takes the buffer's memory (never NULL: "" when empty); the buffer is reset. */
char *sb_take(sbuf *b);

/* ---- arena: every string of one request, freed together ---- */
typedef struct {
    void **p;
    size_t n, cap;
} arena;

void *ar_alloc(arena *a, size_t n);
char *ar_strndup(arena *a, const char *s, size_t n);
char *ar_strdup(arena *a, const char *s);
/* Takes ownership of a malloc'd pointer. */
void *ar_own(arena *a, void *p);
void ar_free(arena *a);

/* ---- time, ids, logging ---- */
double now_s(void);   /* monotonic seconds */
long long wall_s(void); /* unix time */
/* prefix + 2*nbytes random hex digits (from /dev/urandom, or a seeded PRNG). */
void random_id(char *out, size_t outlen, const char *prefix, int nbytes);
void srv_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
extern int srv_log_quiet;

/* ---- cJSON accessors ---- */
const cJSON *jget(const cJSON *o, const char *key);          /* NULL when absent or o not an object */
const char *jstr(const cJSON *o, const char *key);           /* string value or NULL */
/* Text of a string, or the concatenation of the "text" of an array of
 * blocks ({"type":"text"|"input_text"|"output_text","text":...}); NULL + *bad
 * when it is neither. Result is arena-owned. */
char *jtext(arena *a, const cJSON *v, bool *bad);
/* cJSON_PrintUnformatted into the arena. */
char *jprint(arena *a, const cJSON *v);
/* Adds "key": string (len bytes, invalid UTF-8 replaced by U+FFFD). */
cJSON *jadd_strn(cJSON *o, const char *key, const char *s, size_t len);
/* Replace invalid UTF-8 by U+FFFD; malloc'd, NUL-terminated. */
char *utf8_sanitize(const char *s, size_t n, size_t *outlen);

#endif
