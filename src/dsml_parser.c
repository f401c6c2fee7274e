/* dsml_parser.c - incremental reasoning / content / DSML tool-call splitter
 * (see dsml_parser.h).
 *
 * Input accumulates in `pend`; each state looks for the markers that end it:
 *
 *   REASONING   </think>  |  <｜DSML｜tool_calls> (reasoning left unclosed)  |  EOS
 *   CONTENT     <｜DSML｜tool_calls>  |  EOS
 *   TOOL_CALLS  <｜DSML｜invoke ...</｜DSML｜invoke>  |  </｜DSML｜tool_calls>
 *   AFTER       whitespace, EOS; anything else is content again
 *
 * Text is released as soon as no suffix of it can still grow into a marker;
 * in content a trailing run of up to two newlines is also held, since the
 * reference format puts "\n\n" before the tool-call block. Complete invokes
 * are parsed one at a time; one that does not parse is emitted as content.
 */
#include "dsml_parser.h"

#include <stdlib.h>
#include <string.h>

#include "chat_template.h"
#include "strbuf.h"

#define DSML "\xef\xbd\x9c" "DSML\xef\xbd\x9c"
static const char M_THINK_END[] = "</think>";
static const char M_BLOCK_OPEN[] = "<" DSML "tool_calls>";
static const char M_BLOCK_CLOSE[] = "</" DSML "tool_calls>";
static const char M_INVOKE_OPEN[] = "<" DSML "invoke";
static const char M_INVOKE_CLOSE[] = "</" DSML "invoke>";
static const char M_PARAM_OPEN[] = "<" DSML "parameter";
static const char M_PARAM_CLOSE[] = "</" DSML "parameter>";
static const char M_EOS[] = "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>";

enum { ST_REASONING, ST_CONTENT, ST_TOOLS, ST_AFTER, ST_DONE };

struct ds4_dsml_parser {
    int state;
    ds4_dsml_callback cb;
    void *ud;
    char *pend; /* input not yet consumed */
    size_t n, cap;
    int n_calls;
    int block_calls;   /* calls emitted from the current block */
    char lead[2];      /* newlines stripped before the block opener */
    size_t n_lead;
    bool begin_sent;   /* TOOL_CALL_BEGIN sent for the invoke in progress */
    size_t searched;   /* bytes of pend already searched for </｜DSML｜invoke> */
    bool had_error;
    bool oom;
};

ds4_dsml_parser *ds4_dsml_parser_new(bool thinking, ds4_dsml_callback cb, void *ud) {
    ds4_dsml_parser *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->state = thinking ? ST_REASONING : ST_CONTENT;
    p->cb = cb;
    p->ud = ud;
    return p;
}

void ds4_dsml_parser_free(ds4_dsml_parser *p) {
    if (!p) return;
    free(p->pend);
    free(p);
}

ds4_dsml_state ds4_dsml_parser_state(const ds4_dsml_parser *p) {
    switch (p->state) {
    case ST_REASONING: return DS4_DSML_STATE_REASONING;
    case ST_TOOLS: return DS4_DSML_STATE_TOOL_CALLS;
    case ST_DONE: return DS4_DSML_STATE_DONE;
    default: return DS4_DSML_STATE_CONTENT;
    }
}

int ds4_dsml_parser_n_calls(const ds4_dsml_parser *p) { return p->n_calls; }
bool ds4_dsml_parser_had_error(const ds4_dsml_parser *p) { return p->had_error; }

static void emit_text(ds4_dsml_parser *p, ds4_dsml_event_kind kind, const char *s, size_t n) {
    if (!n) return;
    ds4_dsml_event ev = {.kind = kind, .text = s, .len = n};
    p->cb(p->ud, &ev);
}

static void consume(ds4_dsml_parser *p, size_t k) {
    /* pend may still be NULL (nothing fed): memmove needs valid pointers */
    if (k && p->n > k) memmove(p->pend, p->pend + k, p->n - k);
    p->n -= k;
    p->searched = 0;
}

static const char *find(const char *s, size_t n, const char *m) {
    size_t ml = strlen(m);
    if (n < ml) return NULL;
    for (const char *q = s; (q = memchr(q, m[0], (size_t)(s + n - q))) != NULL; q++) {
        if ((size_t)(s + n - q) < ml) return NULL;
        if (memcmp(q, m, ml) == 0) return q;
    }
    return NULL;
}

/* Length of the longest suffix of s[0..n) that is a proper prefix of m. */
static size_t partial_suffix(const char *s, size_t n, const char *m) {
    size_t ml = strlen(m);
    for (size_t k = ml - 1 < n ? ml - 1 : n; k > 0; k--)
        if (memcmp(s + n - k, m, k) == 0) return k;
    return 0;
}

/* ---- one invoke ---- */

static void bput_quoted(ds4_strbuf *b, const char *s, size_t n) {
    char *q = ds4_json_python_quote(s, n);
    if (!q) {
        b->oom = true;
        return;
    }
    ds4_sb_put(b, q, strlen(q));
    free(q);
}

static const char *skip_ws(const char *s, const char *e) {
    while (s < e && (*s == ' ' || *s == '\n' || *s == '\r' || *s == '\t')) s++;
    return s;
}

/* Parse ` name="VALUE"` at s; returns the position after the closing quote. */
static const char *parse_attr(const char *s, const char *e, const char *attr, const char **v, size_t *vn) {
    s = skip_ws(s, e);
    size_t al = strlen(attr);
    if ((size_t)(e - s) < al + 2 || memcmp(s, attr, al) != 0 || s[al] != '=' || s[al + 1] != '"') return NULL;
    s += al + 2;
    const char *q = memchr(s, '"', (size_t)(e - s));
    if (!q) return NULL;
    *v = s;
    *vn = (size_t)(q - s);
    return q + 1;
}

/* Header `<｜DSML｜invoke name="NAME">`: returns the position after '>'. */
static const char *parse_invoke_header(const char *s, const char *e, const char **name, size_t *nn) {
    s += sizeof M_INVOKE_OPEN - 1;
    s = parse_attr(s, e, "name", name, nn);
    if (!s) return NULL;
    s = skip_ws(s, e);
    return s < e && *s == '>' ? s + 1 : NULL;
}

/* s..e is one complete invoke, from "<｜DSML｜invoke" to "</｜DSML｜invoke>".
 * Builds the arguments object like the reference's decode_dsml_to_arguments:
 * {"key": value, ...} with ", " and ": " separators. */
static bool parse_invoke(const char *s, const char *e, const char **name, size_t *nn, ds4_strbuf *args) {
    const char *q = parse_invoke_header(s, e, name, nn);
    if (!q) return false;
    const char *end = e - (sizeof M_INVOKE_CLOSE - 1);
    enum { MAXP = 512 };
    const char *keys[MAXP];
    size_t klens[MAXP];
    char *vals[MAXP]; /* JSON text of each value */
    int np = 0;
    bool ok = true;
    for (;;) {
        q = skip_ws(q, end);
        if (q == end) break;
        ok = false;
        if ((size_t)(end - q) < sizeof M_PARAM_OPEN - 1 || memcmp(q, M_PARAM_OPEN, sizeof M_PARAM_OPEN - 1) != 0)
            break;
        q += sizeof M_PARAM_OPEN - 1;
        const char *key, *str;
        size_t kn, sn;
        if (!(q = parse_attr(q, end, "name", &key, &kn))) break;
        if (!(q = parse_attr(q, end, "string", &str, &sn))) break;
        bool is_str = sn == 4 && !memcmp(str, "true", 4);
        if (!is_str && !(sn == 5 && !memcmp(str, "false", 5))) break;
        q = skip_ws(q, end);
        if (q >= end || *q != '>') break;
        q++;
        const char *ve = find(q, (size_t)(end - q), M_PARAM_CLOSE);
        if (!ve) break;
        size_t vn = (size_t)(ve - q);
        char *val = NULL;
        if (!is_str) { /* kept as written when it is JSON */
            char *chk = ds4_json_python_dumps(q, vn, NULL, 0);
            if (chk && (val = malloc(vn + 1))) {
                memcpy(val, q, vn);
                val[vn] = 0;
            }
            free(chk);
        }
        if (!val) val = ds4_json_python_quote(q, vn);
        if (!val) {
            args->oom = true;
            break;
        }
        int slot = np; /* a repeated key: the later value wins, in the first place */
        for (int k = 0; k < np; k++)
            if (klens[k] == kn && !memcmp(keys[k], key, kn)) slot = k;
        if (slot < np) {
            free(vals[slot]);
        } else if (np == MAXP) {
            free(val);
            break;
        } else {
            np++;
        }
        keys[slot] = key;
        klens[slot] = kn;
        vals[slot] = val;
        q = ve + sizeof M_PARAM_CLOSE - 1;
        ok = true;
    }
    ds4_sb_put(args, "{", 1);
    for (int k = 0; k < np; k++) {
        if (k) ds4_sb_put(args, ", ", 2);
        bput_quoted(args, keys[k], klens[k]);
        ds4_sb_put(args, ": ", 2);
        ds4_sb_put(args, vals[k], strlen(vals[k]));
        free(vals[k]);
    }
    ds4_sb_put(args, "}", 1);
    return ok && !args->oom;
}

/* ---- states ---- */

static void enter_tools(ds4_dsml_parser *p) {
    p->state = ST_TOOLS;
    p->block_calls = 0;
    p->begin_sent = false;
}

/* Malformed or truncated DSML: report the unparsed text as content. */
static void tools_fail(ds4_dsml_parser *p, size_t upto) {
    p->had_error = true;
    if (!p->block_calls) {
        emit_text(p, DS4_DSML_CONTENT, p->lead, p->n_lead);
        emit_text(p, DS4_DSML_CONTENT, M_BLOCK_OPEN, sizeof M_BLOCK_OPEN - 1);
    }
    emit_text(p, DS4_DSML_CONTENT, p->pend, upto);
    consume(p, upto);
    p->state = ST_CONTENT;
}

/* Process as much of pend as possible. final: no more input will come. */
static void step(ds4_dsml_parser *p, bool final) {
    for (;;) {
        if (p->state == ST_DONE) {
            p->n = 0;
            return;
        }
        if (p->state == ST_REASONING || p->state == ST_CONTENT) {
            bool reasoning = p->state == ST_REASONING;
            ds4_dsml_event_kind kind = reasoning ? DS4_DSML_REASONING : DS4_DSML_CONTENT;
            const char *ms[3] = {M_BLOCK_OPEN, M_EOS, reasoning ? M_THINK_END : NULL};
            const char *hit = NULL;
            int which = -1;
            for (int i = 0; i < 3; i++) {
                if (!ms[i]) continue;
                const char *h = find(p->pend, p->n, ms[i]);
                if (h && (!hit || h < hit)) {
                    hit = h;
                    which = i;
                }
            }
            if (hit) {
                size_t pos = (size_t)(hit - p->pend), text_end = pos;
                p->n_lead = 0;
                if (which == 0) /* the "\n\n" before the block belongs to it */
                    while (text_end > 0 && p->n_lead < 2 && p->pend[text_end - 1] == '\n') {
                        text_end--;
                        p->lead[p->n_lead++] = '\n';
                    }
                emit_text(p, kind, p->pend, text_end);
                consume(p, pos + strlen(ms[which]));
                if (which == 0)
                    enter_tools(p);
                else if (which == 1)
                    p->state = ST_DONE;
                else
                    p->state = ST_CONTENT;
                continue;
            }
            size_t hold = 0;
            if (!final) {
                for (int i = 0; i < 3; i++)
                    if (ms[i]) {
                        size_t k = partial_suffix(p->pend, p->n, ms[i]);
                        if (k > hold) hold = k;
                    }
                size_t nl = 0; /* newlines that may precede a block */
                while (nl < 2 && nl + hold < p->n && p->pend[p->n - hold - nl - 1] == '\n') nl++;
                hold += nl;
            }
            emit_text(p, kind, p->pend, p->n - hold);
            consume(p, p->n - hold);
            return;
        }
        if (p->state == ST_AFTER) {
            const char *s = skip_ws(p->pend, p->pend + p->n);
            size_t ws = (size_t)(s - p->pend), rest = p->n - ws;
            if (rest == 0) {
                if (final) p->n = 0;
                return;
            }
            if (rest >= sizeof M_EOS - 1 && !memcmp(s, M_EOS, sizeof M_EOS - 1)) {
                p->state = ST_DONE;
                continue;
            }
            if (!final && rest < sizeof M_EOS - 1 && !memcmp(s, M_EOS, rest)) return;
            consume(p, ws); /* text after the block: treat as content */
            p->state = ST_CONTENT;
            continue;
        }
        /* ST_TOOLS */
        const char *s = skip_ws(p->pend, p->pend + p->n);
        size_t ws = (size_t)(s - p->pend), rest = p->n - ws;
        if (rest == 0) {
            if (final) tools_fail(p, p->n);
            return;
        }
        if (rest >= sizeof M_BLOCK_CLOSE - 1 && !memcmp(s, M_BLOCK_CLOSE, sizeof M_BLOCK_CLOSE - 1)) {
            consume(p, ws + sizeof M_BLOCK_CLOSE - 1);
            p->state = ST_AFTER;
            continue;
        }
        if (rest >= sizeof M_INVOKE_OPEN - 1 && !memcmp(s, M_INVOKE_OPEN, sizeof M_INVOKE_OPEN - 1)) {
            /* search only what arrived since the last look */
            size_t from = p->searched > ws + sizeof M_INVOKE_CLOSE ? p->searched - sizeof M_INVOKE_CLOSE : ws;
            const char *close = find(p->pend + from, p->n - from, M_INVOKE_CLOSE);
            const char *name;
            size_t nn;
            if (!close) {
                p->searched = p->n;
                if (!p->begin_sent && rest > 1024 && !parse_invoke_header(s, p->pend + p->n, &name, &nn)) {
                    tools_fail(p, p->n); /* no sane header in 1 KiB */
                    continue;
                }
                if (!p->begin_sent && parse_invoke_header(s, p->pend + p->n, &name, &nn)) {
                    ds4_dsml_event ev = {.kind = DS4_DSML_TOOL_CALL_BEGIN, .index = p->n_calls, .name = name,
                                         .name_len = nn};
                    p->cb(p->ud, &ev);
                    p->begin_sent = true;
                }
                if (final) tools_fail(p, p->n);
                return;
            }
            const char *e = close + sizeof M_INVOKE_CLOSE - 1;
            ds4_strbuf args = {0};
            if (!parse_invoke(s, e, &name, &nn, &args)) {
                free(args.p);
                if (args.oom) {
                    p->oom = true;
                    return;
                }
                tools_fail(p, (size_t)(e - p->pend));
                continue;
            }
            if (!p->begin_sent) {
                ds4_dsml_event ev = {.kind = DS4_DSML_TOOL_CALL_BEGIN, .index = p->n_calls, .name = name,
                                     .name_len = nn};
                p->cb(p->ud, &ev);
            }
            ds4_dsml_event ev = {.kind = DS4_DSML_TOOL_CALL, .index = p->n_calls, .name = name, .name_len = nn,
                                 .arguments = args.p, .arguments_len = args.n};
            p->cb(p->ud, &ev);
            free(args.p);
            p->n_calls++;
            p->block_calls++;
            p->begin_sent = false;
            consume(p, (size_t)(e - p->pend));
            continue;
        }
        /* a possible start of a tag: wait for more */
        if (!final && ((rest < sizeof M_INVOKE_OPEN - 1 && !memcmp(s, M_INVOKE_OPEN, rest)) ||
                       (rest < sizeof M_BLOCK_CLOSE - 1 && !memcmp(s, M_BLOCK_CLOSE, rest))))
            return;
        tools_fail(p, p->n); /* not DSML */
    }
}

bool ds4_dsml_parser_feed(ds4_dsml_parser *p, const char *text, size_t len) {
    if (p->oom) return false;
    if (p->state == ST_DONE) return true;
    if (p->n + len + 1 > p->cap) {
        size_t nc = p->cap ? p->cap : 256;
        while (nc < p->n + len + 1) nc *= 2;
        char *q = realloc(p->pend, nc);
        if (!q) {
            p->oom = true;
            return false;
        }
        p->pend = q;
        p->cap = nc;
    }
    memcpy(p->pend + p->n, text, len);
    p->n += len;
    step(p, false);
    return !p->oom;
}

bool ds4_dsml_parser_finish(ds4_dsml_parser *p) {
    if (p->oom) return false;
    step(p, true);
    return !p->oom;
}
