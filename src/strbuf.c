/* strbuf.c - see strbuf.h. */
#include "strbuf.h"

#include <stdlib.h>
#include <string.h>

void ds4_sb_put(ds4_strbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 256;
        while (nc < b->n + n + 1) nc *= 2;
        char *q = realloc(b->p, nc);
        if (!q) {
            b->oom = true;
            return;
        }
        b->p = q;
        b->cap = nc;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

void ds4_sb_puts(ds4_strbuf *b, const char *s) { ds4_sb_put(b, s, strlen(s)); }
