/* strbuf.h - a growable, NUL-terminated byte buffer for the library's text
 * builders (prompt rendering, DSML tool-call arguments). Allocation failure
 * is sticky: the buffer stops growing and sets oom, and the caller reports
 * it once at the end instead of checking every append. Zero-initialise
 * ({0}) to start; free(b.p) when done. */
#ifndef DS4_STRBUF_H
#define DS4_STRBUF_H

#include <stdbool.h>
#include <stddef.h>

typedef struct {
    char *p; /* NULL until the first append */
    size_t n, cap;
    bool oom;
} ds4_strbuf;

void ds4_sb_put(ds4_strbuf *b, const char *s, size_t n);
void ds4_sb_puts(ds4_strbuf *b, const char *s);

#endif
