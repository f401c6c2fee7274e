/* chat_template.c - DeepSeek V4 prompt rendering (see chat_template.h).
 *
 * Organisation:
 *   json      a small JSON reader (Python json.loads grammar: NaN/Infinity
 *             accepted, duplicate keys keep the first position and the last
 *             value) and a writer that prints exactly what Python's
 *             json.dumps(value, ensure_ascii=False) prints.
 *   output    the prompt buffer; client-provided text is appended through
 *             put_client() so its byte span is recorded.
 *   messages  the reference's preprocessing, in its order: merge tool
 *             messages into user turns, order tool results like the calls,
 *             drop old reasoning (and old developer turns) in thinking mode
 *             unless some message carries tools.
 *   render    one message at a time, then the transition to the assistant.
 *
 * The fixed strings below (tools prompt, Think-Max prefix, DSML tags) are
 * DeepSeek's, byte for byte: the model was trained on them.
 */
#include "chat_template.h"
#include "strbuf.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BOS "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"
#define EOS "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"
#define USER_TOK "<\xef\xbd\x9cUser\xef\xbd\x9c>"
#define ASSISTANT_TOK "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>"
#define REMINDER_TOK "<\xef\xbd\x9clatest_reminder\xef\xbd\x9c>"
#define THINK_OPEN "<think>"
#define THINK_CLOSE "</think>"
#define DSML "\xef\xbd\x9c" "DSML\xef\xbd\x9c"

static const char THINK_MAX_PREFIX[] =
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to resolve the root "
    "cause, rigorously stress-testing your logic against all potential paths, edge cases, and adversarial "
    "scenarios.\n"
    "Explicitly write out your entire deliberation process, documenting every intermediate step, considered "
    "alternative, and rejected hypothesis to ensure absolutely no assumption is left unchecked.\n\n";

static const char TOOLS_HEAD[] =
    "## Tools\n\n"
    "You have access to a set of tools to help answer the user's question. You can invoke tools by writing a "
    "\"<" DSML "tool_calls>\" block like the following:\n\n"
    "<" DSML "tool_calls>\n"
    "<" DSML "invoke name=\"$TOOL_NAME\">\n"
    "<" DSML "parameter name=\"$PARAMETER_NAME\" string=\"true|false\">$PARAMETER_VALUE</" DSML "parameter>\n"
    "...\n"
    "</" DSML "invoke>\n"
    "<" DSML "invoke name=\"$TOOL_NAME2\">\n"
    "...\n"
    "</" DSML "invoke>\n"
    "</" DSML "tool_calls>\n\n"
    "String parameters should be specified as is and set `string=\"true\"`. For all other types (numbers, "
    "booleans, arrays, objects), pass the value in JSON format and set `string=\"false\"`.\n\n"
    "If thinking_mode is enabled (triggered by " THINK_OPEN "), you MUST output your complete reasoning inside "
    THINK_OPEN "..." THINK_CLOSE " BEFORE any tool calls or final response.\n\n"
    "Otherwise, output directly after " THINK_CLOSE " with tool calls or final response.\n\n"
    "### Available Tool Schemas\n\n";
static const char TOOLS_TAIL[] =
    "\n\nYou MUST strictly follow the above defined tool name and parameter schemas to invoke tool calls.\n";
static const char RESPONSE_FORMAT_HEAD[] =
    "## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n";

static const char *const TASKS[][2] = {
    {"action", "<\xef\xbd\x9c" "action\xef\xbd\x9c>"}, {"query", "<\xef\xbd\x9cquery\xef\xbd\x9c>"},
    {"authority", "<\xef\xbd\x9c" "authority\xef\xbd\x9c>"}, {"domain", "<\xef\xbd\x9c" "domain\xef\xbd\x9c>"},
    {"title", "<\xef\xbd\x9ctitle\xef\xbd\x9c>"}, {"read_url", "<\xef\xbd\x9cread_url\xef\xbd\x9c>"},
};

static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ------------------------------------------------------------------------ */
/* json: reader */

typedef struct jv jv;
struct jv {
    char t;        /* 'n' null 'f' false 't' true 'd' number 's' string 'a' array 'o' object */
    bool is_float; /* number with a fraction or exponent (a Python float) */
    char *s;       /* string bytes (UTF-8; lone surrogates as 3-byte ED sequences) / number text */
    size_t n;
    jv *kids; /* array items / object values */
    char **keys;
    size_t *klen;
    size_t nk, ck;
};

static void jv_free(jv *v) {
    if (!v) return;
    free(v->s);
    for (size_t i = 0; i < v->nk; i++) {
        jv_free(&v->kids[i]);
        if (v->keys) free(v->keys[i]);
    }
    free(v->kids);
    free(v->keys);
    free(v->klen);
    memset(v, 0, sizeof *v);
}

typedef struct {
    const char *s;
    size_t n, i;
    int depth;
    const char *err;
} jreader;

static void jskip(jreader *r) {
    while (r->i < r->n && (r->s[r->i] == ' ' || r->s[r->i] == '\t' || r->s[r->i] == '\n' || r->s[r->i] == '\r'))
        r->i++;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static bool read_hex4(jreader *r, unsigned *out) {
    if (r->i + 4 > r->n) return false;
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
        int h = hexval(r->s[r->i + k]);
        if (h < 0) return false;
        v = v * 16 + (unsigned)h;
    }
    r->i += 4;
    *out = v;
    return true;
}

static void put_cp(ds4_strbuf *b, unsigned cp) {
    char u[4];
    size_t l;
    if (cp < 0x80) {
        u[0] = (char)cp;
        l = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xC0 | (cp >> 6));
        u[1] = (char)(0x80 | (cp & 0x3F));
        l = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | (cp >> 12));
        u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F));
        l = 3;
    } else {
        u[0] = (char)(0xF0 | (cp >> 18));
        u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[3] = (char)(0x80 | (cp & 0x3F));
        l = 4;
    }
    ds4_sb_put(b, u, l);
}

static bool jread_string(jreader *r, char **out, size_t *len) {
    ds4_strbuf b = {0};
    r->i++; /* opening quote */
    for (;;) {
        if (r->i >= r->n) {
            r->err = "unterminated string";
            free(b.p);
            return false;
        }
        unsigned char c = (unsigned char)r->s[r->i];
        if (c == '"') {
            r->i++;
            break;
        }
        if (c < 0x20) {
            r->err = "control character in string";
            free(b.p);
            return false;
        }
        if (c != '\\') {
            size_t j = r->i;
            while (j < r->n && r->s[j] != '"' && r->s[j] != '\\' && (unsigned char)r->s[j] >= 0x20) j++;
            ds4_sb_put(&b, r->s + r->i, j - r->i);
            r->i = j;
            continue;
        }
        if (r->i + 1 >= r->n) {
            r->err = "bad escape";
            free(b.p);
            return false;
        }
        char e = r->s[r->i + 1];
        r->i += 2;
        switch (e) {
        case '"': ds4_sb_put(&b, "\"", 1); break;
        case '\\': ds4_sb_put(&b, "\\", 1); break;
        case '/': ds4_sb_put(&b, "/", 1); break;
        case 'b': ds4_sb_put(&b, "\b", 1); break;
        case 'f': ds4_sb_put(&b, "\f", 1); break;
        case 'n': ds4_sb_put(&b, "\n", 1); break;
        case 'r': ds4_sb_put(&b, "\r", 1); break;
        case 't': ds4_sb_put(&b, "\t", 1); break;
        case 'u': {
            unsigned u;
            if (!read_hex4(r, &u)) {
                r->err = "bad \\u escape";
                free(b.p);
                return false;
            }
            if (u >= 0xD800 && u < 0xDC00 && r->i + 6 <= r->n && r->s[r->i] == '\\' && r->s[r->i + 1] == 'u') {
                size_t save = r->i;
                unsigned lo;
                r->i += 2;
                if (read_hex4(r, &lo) && lo >= 0xDC00 && lo < 0xE000) {
                    u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
                } else {
                    r->i = save; /* a lone high surrogate, kept as is */
                }
            }
            put_cp(&b, u);
            break;
        }
        default:
            r->err = "bad escape";
            free(b.p);
            return false;
        }
    }
    if (b.oom) {
        free(b.p);
        r->err = "out of memory";
        return false;
    }
    if (!b.p) {
        b.p = malloc(1);
        if (!b.p) {
            r->err = "out of memory";
            return false;
        }
        b.p[0] = 0;
    }
    *out = b.p;
    *len = b.n;
    return true;
}

static bool jread_value(jreader *r, jv *v);

static bool jkid_reserve(jv *v, bool obj) {
    if (v->nk < v->ck) return true;
    size_t nc = v->ck ? v->ck * 2 : 4;
    jv *k = realloc(v->kids, nc * sizeof *k);
    if (!k) return false;
    v->kids = k;
    if (obj) {
        char **ks = realloc(v->keys, nc * sizeof *ks);
        if (!ks) return false;
        v->keys = ks;
        size_t *kl = realloc(v->klen, nc * sizeof *kl);
        if (!kl) return false;
        v->klen = kl;
    }
    v->ck = nc;
    return true;
}

static bool jmatch(jreader *r, const char *lit) {
    size_t l = strlen(lit);
    if (r->i + l <= r->n && memcmp(r->s + r->i, lit, l) == 0) {
        r->i += l;
        return true;
    }
    return false;
}

static bool jread_number(jreader *r, jv *v) {
    size_t st = r->i, i = r->i;
    if (i < r->n && r->s[i] == '-') i++;
    if (i < r->n && r->s[i] == '0')
        i++;
    else if (i < r->n && r->s[i] >= '1' && r->s[i] <= '9')
        while (i < r->n && r->s[i] >= '0' && r->s[i] <= '9') i++;
    else {
        r->err = "invalid value";
        return false;
    }
    bool fl = false;
    if (i + 1 < r->n && r->s[i] == '.' && r->s[i + 1] >= '0' && r->s[i + 1] <= '9') {
        i++;
        while (i < r->n && r->s[i] >= '0' && r->s[i] <= '9') i++;
        fl = true;
    }
    if (i < r->n && (r->s[i] == 'e' || r->s[i] == 'E')) {
        size_t j = i + 1;
        if (j < r->n && (r->s[j] == '+' || r->s[j] == '-')) j++;
        if (j < r->n && r->s[j] >= '0' && r->s[j] <= '9') {
            while (j < r->n && r->s[j] >= '0' && r->s[j] <= '9') j++;
            i = j;
            fl = true;
        }
    }
    v->t = 'd';
    v->is_float = fl;
    v->n = i - st;
    v->s = malloc(v->n + 1);
    if (!v->s) {
        r->err = "out of memory";
        return false;
    }
    memcpy(v->s, r->s + st, v->n);
    v->s[v->n] = 0;
    r->i = i;
    return true;
}

static bool jread_value(jreader *r, jv *v) {
    memset(v, 0, sizeof *v);
    jskip(r);
    if (r->i >= r->n) {
        r->err = "unexpected end of JSON";
        return false;
    }
    if (++r->depth > 200) {
        r->err = "JSON nested too deeply";
        return false;
    }
    bool ok = true;
    char c = r->s[r->i];
    if (c == '"') {
        v->t = 's';
        ok = jread_string(r, &v->s, &v->n);
    } else if (c == '{' || c == '[') {
        bool obj = c == '{';
        v->t = obj ? 'o' : 'a';
        r->i++;
        jskip(r);
        if (r->i < r->n && r->s[r->i] == (obj ? '}' : ']')) {
            r->i++;
        } else {
            for (;;) {
                char *key = NULL;
                size_t klen = 0;
                if (obj) {
                    jskip(r);
                    if (r->i >= r->n || r->s[r->i] != '"') {
                        r->err = "expecting property name";
                        ok = false;
                        break;
                    }
                    if (!jread_string(r, &key, &klen)) {
                        ok = false;
                        break;
                    }
                    jskip(r);
                    if (r->i >= r->n || r->s[r->i] != ':') {
                        free(key);
                        r->err = "expecting ':'";
                        ok = false;
                        break;
                    }
                    r->i++;
                }
                jv item;
                if (!jread_value(r, &item)) {
                    free(key);
                    jv_free(&item);
                    ok = false;
                    break;
                }
                size_t slot = v->nk;
                if (obj) /* Python dict: a repeated key keeps its place, takes the new value */
                    for (size_t k = 0; k < v->nk; k++)
                        if (v->klen[k] == klen && memcmp(v->keys[k], key, klen) == 0) slot = k;
                if (slot < v->nk) {
                    jv_free(&v->kids[slot]);
                    v->kids[slot] = item;
                    free(key);
                } else {
                    if (!jkid_reserve(v, obj)) {
                        free(key);
                        jv_free(&item);
                        r->err = "out of memory";
                        ok = false;
                        break;
                    }
                    v->kids[v->nk] = item;
                    if (obj) {
                        v->keys[v->nk] = key;
                        v->klen[v->nk] = klen;
                    }
                    v->nk++;
                }
                jskip(r);
                if (r->i < r->n && r->s[r->i] == ',') {
                    r->i++;
                    continue;
                }
                if (r->i < r->n && r->s[r->i] == (obj ? '}' : ']')) {
                    r->i++;
                    break;
                }
                r->err = "expecting ',' delimiter";
                ok = false;
                break;
            }
        }
    } else if (jmatch(r, "true")) {
        v->t = 't';
    } else if (jmatch(r, "false")) {
        v->t = 'f';
    } else if (jmatch(r, "null")) {
        v->t = 'n';
    } else if (jmatch(r, "NaN") || jmatch(r, "Infinity") || jmatch(r, "-Infinity")) {
        v->t = 'd';
        v->is_float = true;
        const char *lit = r->s[r->i - 1] == 'N' ? "NaN" : r->s[r->i - 9] == '-' ? "-Infinity" : "Infinity";
        v->s = malloc(16);
        if (!v->s) {
            r->err = "out of memory";
            ok = false;
        } else {
            strcpy(v->s, lit);
            v->n = strlen(lit);
        }
    } else {
        ok = jread_number(r, v);
    }
    r->depth--;
    return ok;
}

/* Parse a whole JSON text. */
static bool json_parse(const char *s, size_t n, jv *v, const char **err) {
    jreader r = {.s = s, .n = n};
    if (!jread_value(&r, v)) {
        jv_free(v);
        *err = r.err;
        return false;
    }
    jskip(&r);
    if (r.i != n) {
        jv_free(v);
        *err = "extra data after JSON value";
        return false;
    }
    return true;
}

/* ------------------------------------------------------------------------ */
/* json: Python-style writer */

static void py_str(ds4_strbuf *b, const char *s, size_t n) {
    ds4_sb_put(b, "\"", 1);
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n) {
            unsigned char c = (unsigned char)s[j];
            if (c < 0x20 || c == '"' || c == '\\') break;
            if (c == 0xED && j + 2 < n && (unsigned char)s[j + 1] >= 0xA0) break; /* surrogate */
            j++;
        }
        ds4_sb_put(b, s + i, j - i);
        if (j >= n) break;
        unsigned char c = (unsigned char)s[j];
        char esc[8];
        switch (c) {
        case '"': ds4_sb_put(b, "\\\"", 2); break;
        case '\\': ds4_sb_put(b, "\\\\", 2); break;
        case '\n': ds4_sb_put(b, "\\n", 2); break;
        case '\r': ds4_sb_put(b, "\\r", 2); break;
        case '\t': ds4_sb_put(b, "\\t", 2); break;
        case '\b': ds4_sb_put(b, "\\b", 2); break;
        case '\f': ds4_sb_put(b, "\\f", 2); break;
        case 0xED: {
            unsigned cp = ((c & 0x0Fu) << 12) | (((unsigned char)s[j + 1] & 0x3Fu) << 6) | ((unsigned char)s[j + 2] & 0x3Fu);
            snprintf(esc, sizeof esc, "\\u%04x", cp);
            ds4_sb_put(b, esc, 6);
            j += 2;
            break;
        }
        default:
            snprintf(esc, sizeof esc, "\\u%04x", c);
            ds4_sb_put(b, esc, 6);
        }
        i = j + 1;
    }
    ds4_sb_put(b, "\"", 1);
}

/* repr() of a Python float: shortest digits that round-trip; exponent form
 * when the decimal exponent is < -4 or >= 16. */
static void py_float(ds4_strbuf *b, double d) {
    if (isnan(d)) {
        ds4_sb_puts(b, "NaN");
        return;
    }
    if (isinf(d)) {
        ds4_sb_puts(b, d < 0 ? "-Infinity" : "Infinity");
        return;
    }
    if (d == 0) {
        ds4_sb_puts(b, signbit(d) ? "-0.0" : "0.0");
        return;
    }
    char tmp[64];
    for (int p = 1; p <= 17; p++) {
        snprintf(tmp, sizeof tmp, "%.*e", p - 1, d);
        if (strtod(tmp, NULL) == d) break;
    }
    char digits[32];
    size_t nd = 0;
    const char *q = tmp;
    bool neg = *q == '-';
    if (neg) q++;
    for (; *q && *q != 'e'; q++)
        if (*q >= '0' && *q <= '9') digits[nd++] = *q;
    int e = atoi(q + 1);
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    if (neg) ds4_sb_put(b, "-", 1);
    if (e >= -4 && e < 16) {
        if (e >= 0) {
            for (int k = 0; k <= e; k++) ds4_sb_put(b, (size_t)k < nd ? &digits[k] : "0", 1);
            ds4_sb_put(b, ".", 1);
            if ((size_t)e + 1 < nd)
                ds4_sb_put(b, digits + e + 1, nd - (size_t)e - 1);
            else
                ds4_sb_put(b, "0", 1);
        } else {
            ds4_sb_put(b, "0.", 2);
            for (int k = 0; k < -e - 1; k++) ds4_sb_put(b, "0", 1);
            ds4_sb_put(b, digits, nd);
        }
    } else {
        ds4_sb_put(b, digits, 1);
        if (nd > 1) {
            ds4_sb_put(b, ".", 1);
            ds4_sb_put(b, digits + 1, nd - 1);
        }
        char ex[16];
        snprintf(ex, sizeof ex, "e%c%02d", e < 0 ? '-' : '+', e < 0 ? -e : e);
        ds4_sb_puts(b, ex);
    }
}

static void py_dumps(ds4_strbuf *b, const jv *v) {
    switch (v->t) {
    case 'n': ds4_sb_puts(b, "null"); break;
    case 't': ds4_sb_puts(b, "true"); break;
    case 'f': ds4_sb_puts(b, "false"); break;
    case 's': py_str(b, v->s, v->n); break;
    case 'd':
        if (!v->is_float)
            ds4_sb_puts(b, strcmp(v->s, "-0") == 0 ? "0" : v->s);
        else if (v->s[0] == 'N' || v->s[0] == 'I' || v->s[1] == 'I')
            ds4_sb_puts(b, v->s);
        else
            py_float(b, strtod(v->s, NULL));
        break;
    case 'a':
        ds4_sb_put(b, "[", 1);
        for (size_t i = 0; i < v->nk; i++) {
            if (i) ds4_sb_put(b, ", ", 2);
            py_dumps(b, &v->kids[i]);
        }
        ds4_sb_put(b, "]", 1);
        break;
    case 'o':
        ds4_sb_put(b, "{", 1);
        for (size_t i = 0; i < v->nk; i++) {
            if (i) ds4_sb_put(b, ", ", 2);
            py_str(b, v->keys[i], v->klen[i]);
            ds4_sb_put(b, ": ", 2);
            py_dumps(b, &v->kids[i]);
        }
        ds4_sb_put(b, "}", 1);
        break;
    }
}

char *ds4_json_python_dumps(const char *json, size_t len, char *err, size_t errlen) {
    jv v;
    const char *e;
    if (!json_parse(json, len, &v, &e)) {
        set_err(err, errlen, "invalid JSON: %s", e);
        return NULL;
    }
    ds4_strbuf b = {0};
    py_dumps(&b, &v);
    jv_free(&v);
    if (b.oom || !b.p) {
        free(b.p);
        set_err(err, errlen, "out of memory");
        return NULL;
    }
    return b.p;
}

char *ds4_json_python_quote(const char *s, size_t n) {
    ds4_strbuf b = {0};
    py_str(&b, s, n);
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

/* ------------------------------------------------------------------------ */
/* output with client spans */

typedef struct {
    ds4_chat_prompt *p;
    bool oom;
} out_t;

static void put_n(out_t *o, const char *s, size_t n) {
    ds4_chat_prompt *p = o->p;
    if (o->oom || n == 0) return;
    if (p->len + n + 1 > p->cap) {
        size_t nc = p->cap ? p->cap : 1024;
        while (nc < p->len + n + 1) nc *= 2;
        char *q = realloc(p->text, nc);
        if (!q) {
            o->oom = true;
            return;
        }
        p->text = q;
        p->cap = nc;
    }
    memcpy(p->text + p->len, s, n);
    p->len += n;
    p->text[p->len] = 0;
}

static void put(out_t *o, const char *s) { put_n(o, s, strlen(s)); }

static void put_client_n(out_t *o, const char *s, size_t n) {
    if (n == 0 || o->oom) return;
    ds4_chat_prompt *p = o->p;
    size_t start = p->len;
    put_n(o, s, n);
    if (o->oom) return;
    if (p->n_spans && p->spans[p->n_spans - 1].end == start) { /* extend an adjacent span */
        p->spans[p->n_spans - 1].end = p->len;
        return;
    }
    if (p->n_spans == p->cap_spans) {
        size_t nc = p->cap_spans ? p->cap_spans * 2 : 16;
        ds4_span *q = realloc(p->spans, nc * sizeof *q);
        if (!q) {
            o->oom = true;
            return;
        }
        p->spans = q;
        p->cap_spans = nc;
    }
    p->spans[p->n_spans++] = (ds4_span){start, p->len};
}

static void put_client(out_t *o, const char *s) {
    if (s) put_client_n(o, s, strlen(s));
}

void ds4_chat_prompt_free(ds4_chat_prompt *p) {
    free(p->text);
    free(p->spans);
    memset(p, 0, sizeof *p);
}

/* ------------------------------------------------------------------------ */
/* messages */

enum { R_SYSTEM, R_DEVELOPER, R_USER, R_ASSISTANT, R_REMINDER, R_TOOL };

typedef struct {
    bool is_tool_result;
    const char *text;
    const char *tool_use_id;
} block_t;

typedef struct {
    int role;
    const ds4_chat_message *m; /* source (first source, for merged user turns) */
    block_t *blocks;           /* user turns */
    size_t nb, cb;
    const char *task;
    bool wo_eos;
    bool drop_reasoning;
    jv tools; /* parsed tools_json ('a'), t = 0 if none */
} item_t;

static int role_of(const char *r) {
    if (!r) return -1;
    if (!strcmp(r, "system")) return R_SYSTEM;
    if (!strcmp(r, "developer")) return R_DEVELOPER;
    if (!strcmp(r, "user")) return R_USER;
    if (!strcmp(r, "assistant")) return R_ASSISTANT;
    if (!strcmp(r, "latest_reminder")) return R_REMINDER;
    if (!strcmp(r, "tool")) return R_TOOL;
    return -1;
}

static bool add_block(item_t *it, block_t b) {
    if (it->nb == it->cb) {
        size_t nc = it->cb ? it->cb * 2 : 4;
        block_t *q = realloc(it->blocks, nc * sizeof *q);
        if (!q) return false;
        it->blocks = q;
        it->cb = nc;
    }
    it->blocks[it->nb++] = b;
    return true;
}

static bool has_tools(const item_t *it) { return it->tools.t == 'a' && it->tools.nk > 0; }

static const char *task_token(const char *task) {
    for (size_t i = 0; i < sizeof TASKS / sizeof TASKS[0]; i++)
        if (!strcmp(task, TASKS[i][0])) return TASKS[i][1];
    return NULL;
}

/* merge_tool_messages + sort_tool_results_by_call_order of the reference. */
static bool build_items(const ds4_chat_message *msgs, size_t n, item_t *items, size_t *n_items, char *err,
                        size_t errlen) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const ds4_chat_message *m = &msgs[i];
        int role = role_of(m->role);
        if (role < 0) {
            set_err(err, errlen, "message %zu: unknown role '%s'", i, m->role ? m->role : "(null)");
            return false;
        }
        if (m->task && !task_token(m->task)) {
            set_err(err, errlen, "message %zu: unknown task '%s'", i, m->task);
            return false;
        }
        item_t *last = k ? &items[k - 1] : NULL;
        if (role == R_TOOL) {
            block_t b = {true, m->content ? m->content : "", m->tool_call_id ? m->tool_call_id : ""};
            if (last && last->role == R_USER) {
                if (!add_block(last, b)) goto oom;
            } else {
                items[k] = (item_t){.role = R_USER, .m = m};
                if (!add_block(&items[k++], b)) goto oom;
            }
        } else if (role == R_USER) {
            block_t b = {false, m->content ? m->content : "", NULL};
            if (last && last->role == R_USER && !last->task) {
                if (!add_block(last, b)) goto oom;
            } else {
                items[k] = (item_t){.role = R_USER, .m = m, .task = m->task, .wo_eos = m->wo_eos};
                if (!add_block(&items[k++], b)) goto oom;
            }
        } else {
            items[k] = (item_t){.role = role, .m = m, .task = m->task, .wo_eos = m->wo_eos};
            if (m->tools_json) {
                const char *e;
                if (!json_parse(m->tools_json, strlen(m->tools_json), &items[k].tools, &e)) {
                    set_err(err, errlen, "message %zu: tools: invalid JSON: %s", i, e);
                    k++;
                    *n_items = k;
                    return false;
                }
                if (items[k].tools.t != 'a') {
                    set_err(err, errlen, "message %zu: tools must be a JSON array", i);
                    k++;
                    *n_items = k;
                    return false;
                }
            }
            k++;
        }
        *n_items = k;
    }
    /* tool results follow the order of the calls of the latest assistant turn */
    const ds4_chat_message *calls = NULL;
    for (size_t i = 0; i < k; i++) {
        item_t *it = &items[i];
        if (it->role == R_ASSISTANT && it->m->n_tool_calls) {
            calls = it->m;
        } else if (it->role == R_USER && calls) {
            size_t nt = 0;
            bool any_id = false;
            for (size_t c = 0; c < calls->n_tool_calls; c++)
                if (calls->tool_calls[c].id && calls->tool_calls[c].id[0]) any_id = true;
            for (size_t b = 0; b < it->nb; b++) nt += it->blocks[b].is_tool_result;
            if (nt < 2 || !any_id) continue;
            block_t *tb = malloc(nt * sizeof *tb);
            size_t *key = malloc(nt * sizeof *key);
            if (!tb || !key) {
                free(tb);
                free(key);
                goto oom;
            }
            size_t t = 0;
            for (size_t b = 0; b < it->nb; b++) {
                if (!it->blocks[b].is_tool_result) continue;
                tb[t] = it->blocks[b];
                key[t] = 0; /* unknown ids sort as position 0, like the reference */
                for (size_t c = 0; c < calls->n_tool_calls; c++) { /* a repeated id: the last call wins */
                    const char *id = calls->tool_calls[c].id;
                    if (id && id[0] && !strcmp(id, tb[t].tool_use_id)) key[t] = c;
                }
                t++;
            }
            for (size_t a = 1; a < nt; a++) { /* stable insertion sort */
                block_t bb = tb[a];
                size_t kk = key[a], j = a;
                while (j > 0 && key[j - 1] > kk) {
                    tb[j] = tb[j - 1];
                    key[j] = key[j - 1];
                    j--;
                }
                tb[j] = bb;
                key[j] = kk;
            }
            t = 0;
            for (size_t b = 0; b < it->nb; b++)
                if (it->blocks[b].is_tool_result) it->blocks[b] = tb[t++];
            free(tb);
            free(key);
        }
    }
    return true;
oom:
    set_err(err, errlen, "out of memory");
    return false;
}

/* ------------------------------------------------------------------------ */
/* rendering */

static void render_tools(out_t *o, const jv *tools) {
    put(o, TOOLS_HEAD);
    for (size_t i = 0; i < tools->nk; i++) {
        const jv *t = &tools->kids[i];
        if (t->t == 'o')
            for (size_t k = 0; k < t->nk; k++)
                if (t->klen[k] == 8 && !memcmp(t->keys[k], "function", 8)) t = &t->kids[k];
        ds4_strbuf b = {0};
        py_dumps(&b, t);
        if (b.oom) o->oom = true;
        if (i) put(o, "\n");
        put_client_n(o, b.p ? b.p : "", b.n);
        free(b.p);
    }
    put(o, TOOLS_TAIL);
}

static bool render_response_format(out_t *o, const char *json, char *err, size_t errlen) {
    char *s = ds4_json_python_dumps(json, strlen(json), err, errlen);
    if (!s) return false;
    put(o, "\n\n");
    put(o, RESPONSE_FORMAT_HEAD);
    put_client(o, s);
    free(s);
    return true;
}

/* One parameter line of a DSML invoke. */
static void render_param(out_t *o, const char *key, size_t klen, bool is_str, const char *val, size_t vlen) {
    put(o, "<" DSML "parameter name=\"");
    put_client_n(o, key, klen);
    put(o, is_str ? "\" string=\"true\">" : "\" string=\"false\">");
    put_client_n(o, val, vlen);
    put(o, "</" DSML "parameter>");
}

static void render_tool_call(out_t *o, const ds4_chat_tool_call *tc) {
    put(o, "<" DSML "invoke name=\"");
    if (tc->name)
        put_client(o, tc->name);
    else
        put(o, "None");
    put(o, "\">\n");
    jv args;
    const char *e;
    if (!tc->arguments) {
        render_param(o, "arguments", 9, false, "null", 4);
    } else if (json_parse(tc->arguments, strlen(tc->arguments), &args, &e) && args.t == 'o') {
        for (size_t k = 0; k < args.nk; k++) {
            if (k) put(o, "\n");
            const jv *v = &args.kids[k];
            if (v->t == 's') {
                render_param(o, args.keys[k], args.klen[k], true, v->s, v->n);
            } else {
                ds4_strbuf b = {0};
                py_dumps(&b, v);
                if (b.oom) o->oom = true;
                render_param(o, args.keys[k], args.klen[k], false, b.p ? b.p : "", b.n);
                free(b.p);
            }
        }
        jv_free(&args);
    } else {
        /* not a JSON object: one string parameter holding the raw text */
        if (args.t) jv_free(&args);
        render_param(o, "arguments", 9, true, tc->arguments, strlen(tc->arguments));
    }
    put(o, "\n</" DSML "invoke>");
}

static int last_user_index(const item_t *items, const size_t *order, size_t n) {
    for (size_t i = n; i-- > 0;) {
        int r = items[order[i]].role;
        if (r == R_USER || r == R_DEVELOPER) return (int)i;
    }
    return -1;
}

bool ds4_chat_render(const ds4_chat_message *msgs, size_t n, const ds4_chat_options *opt, ds4_chat_prompt *out,
                     char *err, size_t errlen) {
    static const ds4_chat_options defaults = {0};
    if (!opt) opt = &defaults;
    memset(out, 0, sizeof *out);
    out_t o = {.p = out};
    item_t *items = calloc(n ? n : 1, sizeof *items);
    size_t *order = calloc(n ? n : 1, sizeof *order);
    size_t n_items = 0, n_order = 0;
    bool ok = false;
    if (!items || !order) {
        set_err(err, errlen, "out of memory");
        goto done;
    }
    if (!build_items(msgs, n, items, &n_items, err, errlen)) goto done;

    bool thinking = opt->think != DS4_THINK_NONE;
    bool think_max = opt->think == DS4_THINK_MAX && opt->ctx_size >= DS4_THINK_MAX_MIN_CTX;
    bool drop = !opt->keep_reasoning;
    for (size_t i = 0; i < n_items; i++)
        if (has_tools(&items[i])) drop = false;

    /* _drop_thinking_messages: before the last user/developer turn, keep
     * user/system/reminder turns, strip assistant reasoning, drop the rest */
    for (size_t i = 0; i < n_items; i++) order[i] = i;
    n_order = n_items;
    if (thinking && drop) {
        int lu = last_user_index(items, order, n_items);
        n_order = 0;
        for (size_t i = 0; i < n_items; i++) {
            int r = items[i].role;
            if (r == R_USER || r == R_SYSTEM || r == R_REMINDER || (int)i >= lu) {
                order[n_order++] = i;
            } else if (r == R_ASSISTANT) {
                items[i].drop_reasoning = true;
                order[n_order++] = i;
            }
        }
    }
    int last_user = last_user_index(items, order, n_order);

    if (!opt->no_bos) put(&o, BOS);
    for (size_t idx = 0; idx < n_order; idx++) {
        item_t *it = &items[order[idx]];
        const ds4_chat_message *m = it->m;
        if (idx == 0 && thinking && think_max) put(&o, THINK_MAX_PREFIX);
        switch (it->role) {
        case R_SYSTEM:
            put_client(&o, m->content);
            if (has_tools(it)) {
                put(&o, "\n\n");
                render_tools(&o, &it->tools);
            }
            if (m->response_format_json && !render_response_format(&o, m->response_format_json, err, errlen))
                goto done;
            break;
        case R_DEVELOPER:
            if (!m->content || !m->content[0]) {
                set_err(err, errlen, "a developer message needs content");
                goto done;
            }
            put(&o, USER_TOK);
            put_client(&o, m->content);
            if (has_tools(it)) {
                put(&o, "\n\n");
                render_tools(&o, &it->tools);
            }
            if (m->response_format_json && !render_response_format(&o, m->response_format_json, err, errlen))
                goto done;
            break;
        case R_USER:
            put(&o, USER_TOK);
            for (size_t b = 0; b < it->nb; b++) {
                if (b) put(&o, "\n\n");
                if (it->blocks[b].is_tool_result) {
                    put(&o, "<tool_result>");
                    put_client(&o, it->blocks[b].text);
                    put(&o, "</tool_result>");
                } else {
                    put_client(&o, it->blocks[b].text);
                }
            }
            break;
        case R_REMINDER:
            put(&o, REMINDER_TOK);
            put_client(&o, m->content);
            break;
        case R_ASSISTANT: {
            bool prev_task = idx > 0 && items[order[idx - 1]].task;
            if (thinking && !prev_task && (!drop || (int)idx > last_user)) {
                if (!it->drop_reasoning) put_client(&o, m->reasoning_content);
                put(&o, THINK_CLOSE);
            }
            put_client(&o, m->content);
            if (m->n_tool_calls) {
                put(&o, "\n\n<" DSML "tool_calls>\n");
                for (size_t c = 0; c < m->n_tool_calls; c++) {
                    if (c) put(&o, "\n");
                    render_tool_call(&o, &m->tool_calls[c]);
                }
                put(&o, "\n</" DSML "tool_calls>");
            }
            if (!it->wo_eos) put(&o, EOS);
            break;
        }
        }
        /* the transition: only before an assistant / reminder turn or at the end */
        if (idx + 1 < n_order) {
            int next = items[order[idx + 1]].role;
            if (next != R_ASSISTANT && next != R_REMINDER) continue;
        }
        if (it->task) {
            if (strcmp(it->task, "action") != 0) {
                put(&o, task_token(it->task));
            } else {
                put(&o, ASSISTANT_TOK);
                put(&o, thinking ? THINK_OPEN : THINK_CLOSE);
                put(&o, task_token(it->task));
            }
        } else if (it->role == R_USER || it->role == R_DEVELOPER) {
            put(&o, ASSISTANT_TOK);
            if (thinking && (!drop || (int)idx >= last_user))
                put(&o, THINK_OPEN);
            else
                put(&o, THINK_CLOSE);
        }
    }
    if (o.oom) {
        set_err(err, errlen, "out of memory");
        goto done;
    }
    if (!out->text) out->text = calloc(1, 1);
    ok = out->text != NULL;
done:
    for (size_t i = 0; i < n_items; i++) {
        free(items[i].blocks);
        jv_free(&items[i].tools);
    }
    free(items);
    free(order);
    if (!ok) ds4_chat_prompt_free(out);
    return ok;
}

bool ds4_chat_tokenize(const ds4_tokenizer *t, const ds4_chat_prompt *p, bool trust_content, ds4_tokens *out) {
    if (trust_content) return ds4_tokenize(t, p->text, p->len, true, out);
    return ds4_tokenize_spans(t, p->text, p->len, p->spans, p->n_spans, out);
}

bool ds4_chat_prompt_ids(const ds4_tokenizer *t, const char *system, const char *user, ds4_think_mode think,
                         uint64_t ctx_size, bool trust_content, ds4_tokens *out, char *err, size_t errlen) {
    ds4_chat_message m[2] = {{.role = "system", .content = system ? system : ""}, {.role = "user", .content = user}};
    ds4_chat_options opt = {.think = think, .ctx_size = ctx_size};
    ds4_chat_prompt p;
    if (!ds4_chat_render(m, 2, &opt, &p, err, errlen)) return false;
    bool ok = ds4_chat_tokenize(t, &p, trust_content, out);
    if (!ok) set_err(err, errlen, "out of memory");
    ds4_chat_prompt_free(&p);
    return ok;
}
