/* toolargs.c - a tool call's arguments while the model is still writing them.
 *
 * The DSML parser (src/dsml_parser) reports a call's arguments once its
 * invoke is closed. To stream them, the engine asks here, after each token,
 * for the JSON text implied by the parameters that are already complete:
 *
 *   {"city": "Paris", "days": 3        (no closing brace yet)
 *
 * built with the parser's rules (string="true" values as JSON strings,
 * string="false" values kept as written when they are JSON, quoted
 * otherwise; ", " and ": " separators), so that the fragments the client
 * concatenates spell the parser's final text. A key the model repeats is
 * streamed again as a repeated key (JSON readers keep the last value, as the
 * parser does); the final text then differs from the concatenation only in
 * where that key sits.
 */
#include <stdlib.h>
#include <string.h>

#include "server.h"

#define DSML "\xef\xbd\x9c" "DSML\xef\xbd\x9c"
static const char P_OPEN[] = "<" DSML "parameter";
static const char P_CLOSE[] = "</" DSML "parameter>";

static const char *skip_ws(const char *s, const char *e) {
    while (s < e && (*s == ' ' || *s == '\n' || *s == '\r' || *s == '\t')) s++;
    return s;
}

static const char *attr(const char *s, const char *e, const char *name, const char **v, size_t *vn) {
    s = skip_ws(s, e);
    size_t l = strlen(name);
    if ((size_t)(e - s) < l + 2 || memcmp(s, name, l) || s[l] != '=' || s[l + 1] != '"') return NULL;
    s += l + 2;
    const char *q = memchr(s, '"', (size_t)(e - s));
    if (!q) return NULL;
    *v = s;
    *vn = (size_t)(q - s);
    return q + 1;
}

static const char *find(const char *s, const char *e, const char *m) {
    size_t ml = strlen(m);
    for (const char *q = s; q + ml <= e; q++)
        if (*q == m[0] && !memcmp(q, m, ml)) return q;
    return NULL;
}

int dsml_args_prefix(const char *s, size_t n, sbuf *out) {
    const char *e = s + n;
    const char *q = memchr(s, '>', n); /* end of the invoke header */
    out->n = 0;
    if (!q) return 0;
    q++;
    int parts = 0;
    for (;;) {
        q = skip_ws(q, e);
        if ((size_t)(e - q) < sizeof P_OPEN - 1 || memcmp(q, P_OPEN, sizeof P_OPEN - 1)) break;
        const char *key, *str;
        size_t kn, sn;
        const char *h = attr(q + sizeof P_OPEN - 1, e, "name", &key, &kn);
        if (h) h = attr(h, e, "string", &str, &sn);
        if (h) h = skip_ws(h, e);
        if (!h || h >= e || *h != '>') break;
        h++;
        const char *ve = find(h, e, P_CLOSE);
        if (!ve) break; /* the value is still being written */
        bool is_str = sn == 4 && !memcmp(str, "true", 4);
        char *k = ds4_json_python_quote(key, kn), *v = NULL;
        if (!is_str) {
            char *chk = ds4_json_python_dumps(h, (size_t)(ve - h), NULL, 0);
            if (chk) v = strndup(h, (size_t)(ve - h));
            free(chk);
        }
        if (!v) v = ds4_json_python_quote(h, (size_t)(ve - h));
        if (!k || !v) {
            free(k);
            free(v);
            break;
        }
        sb_puts(out, parts ? ", " : "{");
        sb_puts(out, k);
        sb_puts(out, ": ");
        sb_puts(out, v);
        free(k);
        free(v);
        parts++;
        q = ve + sizeof P_CLOSE - 1;
    }
    return parts;
}
