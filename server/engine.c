/* engine.c - the inference worker: one thread, one FIFO of jobs, one live
 * session.
 *
 * Prefix reuse is decided on text, not on token ids. The live session's
 * tokens are kept with the text they spell (live_text, live_offs): tokens the
 * model sampled rarely re-tokenize to the same ids, so an id comparison would
 * stop at the first generated token of every turn, while the client sends the
 * same text back. For a new prompt (splice()):
 *   1. L = the longest common byte prefix of the live text and the prompt;
 *   2. keep the live tokens that end within L (less any whose special-token
 *      reading differs from the prompt's: client text is plain, markers are
 *      special, so equal bytes do not always mean equal tokens);
 *   3. continue with the prompt's own tokens from the first kept boundary
 *      (within 8 tokens) that is also one of the prompt's token boundaries, or
 *      else tokenize the rest of the text from the cut.
 * The engine can only extend a session in place (ds4_session_truncate
 * re-evaluates the prefix), so a live session is reused when it is a prefix
 * of the prompt; otherwise the disk KV cache (kvdisk.c) may hold a shorter
 * checkpoint of this prompt, else the prompt is evaluated from scratch.
 *
 * Disk saves (docs/SERVER.md, "Disk KV cache"): cold (a new prompt's stable
 * prefix, the tokens before its last <｜Assistant｜>, once it has
 * --kv-cache-min-tokens), continued (the same, every
 * --kv-cache-continued-interval-tokens more), system (a new prompt's system
 * block, shared by new conversations of the same agent), evict (a live
 * session with enough unsaved tokens that a new conversation replaces),
 * shutdown.
 *
 * Generation: the request's sampler, except inside DSML tool-call syntax
 * (tags, parameter headers) where the token is argmax; string and JSON
 * parameter values use the request's settings. The output goes through the
 * DSML parser into events; a call's arguments stream parameter by parameter
 * (toolargs.c); a closed tool-call block ends the turn (finish
 * "tool_calls"), and the exact generated text is remembered under the call
 * ids (toolmem.c). Stop strings are matched on the answer text (after the
 * reasoning); the text before the match is returned.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dsml_parser.h"
#include "server.h"

#define DSML "\xef\xbd\x9c" "DSML\xef\xbd\x9c"
#define ASSISTANT_TOK "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>"
#define USER_TOK "<\xef\xbd\x9cUser\xef\xbd\x9c>"
static const char M_BLOCK_OPEN[] = "<" DSML "tool_calls>";
static const char M_BLOCK_CLOSE[] = "</" DSML "tool_calls>";
static const char M_PARAM_OPEN[] = "<" DSML "parameter";
static const char M_PARAM_CLOSE[] = "</" DSML "parameter>";
static const char M_THINK_END[] = "</think>";

struct srv_engine {
    const srv_config *cfg;
    ds4_model *m;
    const ds4_tokenizer *tok;
    srv_toolmem *tm;
    srv_kvdisk *kv;
    ds4_session *s;
    sbuf live_text;      /* bytes of the session's tokens */
    uint32_t *live_offs; /* [n_ctx + 1] */
    uint32_t saved;      /* live tokens already covered by a disk entry */
    char *rewind_path;   /* rewind checkpoint (see rewind_save), NULL: off */
    sbuf rewind_text;    /* its text; empty: none */
    int32_t eos, assistant_tok, user_tok;
    uint32_t vocab;
    float *masked; /* [vocab] logits for forced tokens */
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    srv_job *head, *tail, *current;
    int qlen;
    bool stopping;
};

/* ------------------------------------------------------------------------ */
/* jobs */

srv_job *job_new(srv_request *req) {
    srv_job *j = calloc(1, sizeof *j);
    if (!j) abort();
    pthread_mutex_init(&j->mu, NULL);
    pthread_cond_init(&j->cv, NULL);
    j->refs = 1;
    j->req = req;
    j->cache_source = "none";
    random_id(j->id, sizeof j->id, "req_", 6);
    j->t_queued = now_s();
    return j;
}

void job_unref(srv_job *j) {
    pthread_mutex_lock(&j->mu);
    int r = --j->refs;
    pthread_mutex_unlock(&j->mu);
    if (r) return;
    for (size_t i = 0; i < j->n_ev; i++) {
        free(j->ev[i].text);
        free(j->ev[i].id);
        free(j->ev[i].name);
        free(j->ev[i].args);
    }
    free(j->ev);
    srv_prompt_free(&j->prompt);
    srv_request_free(j->req);
    free(j->req);
    pthread_mutex_destroy(&j->mu);
    pthread_cond_destroy(&j->cv);
    free(j);
}

void job_push(srv_job *j, srv_event ev) {
    pthread_mutex_lock(&j->mu);
    if (j->n_ev == j->cap_ev) {
        j->cap_ev = j->cap_ev ? j->cap_ev * 2 : 64;
        j->ev = realloc(j->ev, j->cap_ev * sizeof *j->ev);
        if (!j->ev) abort();
    }
    j->ev[j->n_ev++] = ev;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
}

static void job_finish(srv_job *j) {
    pthread_mutex_lock(&j->mu);
    j->t_end = now_s();
    j->done = true;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
}

static void job_fail(srv_job *j, int status, const char *msg) {
    j->finish = "error";
    j->err_status = status;
    snprintf(j->err, sizeof j->err, "%s", msg);
}

/* ------------------------------------------------------------------------ */
/* the live session and its text */

static void live_reset(srv_engine *e) {
    char err[256];
    ds4_session_truncate(e->s, 0, err, sizeof err);
    e->live_text.n = 0;
    if (e->live_text.p) e->live_text.p[0] = 0;
    e->live_offs[0] = 0;
    e->saved = 0;
}

/* Rebuild live_text from the session's tokens (after a load). */
static void live_sync(srv_engine *e) {
    uint32_t n = ds4_session_n_tokens(e->s);
    const int32_t *ids = ds4_session_tokens(e->s);
    e->live_text.n = 0;
    srv_token_offsets(e->tok, ids, n, 0, e->live_offs);
    for (uint32_t i = 0; i < n; i++) {
        size_t l;
        const char *b = ds4_token_bytes(e->tok, ids[i], &l);
        sb_put(&e->live_text, b, l);
    }
}

static bool live_eval(srv_engine *e, const int32_t *ids, uint32_t n, char *err, size_t errlen) {
    uint32_t n0 = ds4_session_n_tokens(e->s);
    if (!ds4_session_eval(e->s, ids, n, NULL, err, errlen)) return false;
    for (uint32_t i = 0; i < n; i++) {
        size_t l;
        const char *b = ds4_token_bytes(e->tok, ids[i], &l);
        sb_put(&e->live_text, b, l);
        e->live_offs[n0 + i + 1] = (uint32_t)e->live_text.n;
    }
    return true;
}

/* ------------------------------------------------------------------------ */
/* splice: how much of a tokenized base (live session or loaded checkpoint)
 * the prompt can keep */

typedef struct {
    uint32_t keep;     /* base tokens kept */
    bool canonical;    /* the suffix is the prompt's ids from index j */
    uint32_t j;
    int32_t *suffix;   /* else: the tokenized rest of the text (malloc'd) */
    uint32_t n_suffix;
} splice_t;

static bool is_boundary(const srv_prompt *p, uint32_t off, uint32_t *j) {
    uint32_t lo = 0, hi = p->n; /* offs[0..n] sorted */
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (p->offs[mid] < off) lo = mid + 1; else hi = mid;
    }
    if (lo <= p->n && p->offs[lo] == off && lo < p->n) {
        *j = lo;
        return true;
    }
    return false;
}

static splice_t splice(const srv_engine *e, const int32_t *B, const uint32_t *Boff, uint32_t nb, const char *BT,
                       const srv_prompt *P) {
    splice_t r = {0};
    size_t L = 0, lim = Boff[nb] < P->len ? Boff[nb] : P->len;
    while (L < lim && BT[L] == P->text[L]) L++;
    uint32_t k = 0;
    { /* largest k with Boff[k] <= L */
        uint32_t lo = 0, hi = nb;
        while (lo < hi) {
            uint32_t mid = (lo + hi + 1) / 2;
            if (Boff[mid] <= L) lo = mid; else hi = mid - 1;
        }
        k = lo;
    }
    if (k == nb && Boff[nb] == P->len && nb > 0) {
        r.keep = nb; /* the whole prompt is already evaluated */
        r.canonical = true;
        r.j = P->n;
        return r;
    }
    while (k > 0 && Boff[k] >= P->len) k--; /* leave at least one token to evaluate */
    /* special tokens must sit at the same places in both readings */
    uint32_t bi = 0, pi = 0;
    for (;;) {
        while (bi < k && !ds4_token_is_added(e->tok, B[bi])) bi++;
        while (pi < P->n && P->offs[pi] < Boff[k] && !ds4_token_is_added(e->tok, P->ids[pi])) pi++;
        bool bh = bi < k, ph = pi < P->n && P->offs[pi] < Boff[k];
        if (!bh && !ph) break;
        if (bh && ph && Boff[bi] == P->offs[pi] && B[bi] == P->ids[pi]) {
            bi++;
            pi++;
            continue;
        }
        uint32_t q = bh && ph ? (Boff[bi] < P->offs[pi] ? Boff[bi] : P->offs[pi]) : bh ? Boff[bi] : P->offs[pi];
        while (k > 0 && Boff[k] > q) k--;
        break;
    }
    for (uint32_t k2 = k; k2 + 8 >= k; k2--) {
        uint32_t j;
        if (is_boundary(P, Boff[k2], &j)) {
            r.keep = k2;
            r.canonical = true;
            r.j = j;
            return r;
        }
        if (k2 == 0) break;
    }
    r.keep = k;
    r.canonical = false;
    /* tokenize the rest on its own, client spans clipped to it */
    size_t b = Boff[k];
    ds4_span *sp = malloc((P->n_spans + 1) * sizeof *sp);
    size_t ns = 0;
    for (size_t i = 0; i < P->n_spans; i++) {
        if (P->spans[i].end <= b) continue;
        size_t s0 = P->spans[i].start > b ? P->spans[i].start : b;
        sp[ns++] = (ds4_span){s0 - b, P->spans[i].end - b};
    }
    ds4_tokens t = {0};
    if (e->cfg->trust_content)
        ds4_tokenize(e->tok, P->text + b, P->len - b, true, &t);
    else
        ds4_tokenize_spans(e->tok, P->text + b, P->len - b, sp, ns, &t);
    free(sp);
    r.suffix = t.ids;
    r.n_suffix = (uint32_t)t.n;
    return r;
}

/* ------------------------------------------------------------------------ */
/* prefill with progress, cancellation and a disk save point */

/* The rewind checkpoint: the session at the last prompt's stable boundary
 * (before its final <｜Assistant｜>), in a file on tmpfs. The engine cannot
 * cut a session in place, so when a prompt shares only part of the live
 * session (the same request sent again, a stop string, reasoning that the
 * template drops from history) this is what saves a full prefill. */
static void rewind_save(srv_engine *e) {
    char err[256];
    e->rewind_text.n = 0;
    if (!ds4_session_save(e->s, e->rewind_path, err, sizeof err)) {
        srv_log("rewind checkpoint: %s", err);
        return;
    }
    sb_put(&e->rewind_text, e->live_text.p, e->live_text.n);
}

/* A point in the prompt where the session is saved on the way. */
typedef struct {
    uint32_t at;        /* absolute token count; 0: none */
    bool disk, rewind;  /* to the disk cache (with reason), as the rewind checkpoint */
    const char *reason;
} checkpoint;

static bool prefill(srv_engine *e, srv_job *j, const int32_t *ids, uint32_t n, const checkpoint *cp, int n_cp) {
    const uint32_t step = 256;
    uint32_t base = ds4_session_n_tokens(e->s), done = 0;
    double t0 = now_s(), last_log = t0;
    char err[256];
    while (done < n) {
        if (atomic_load(&j->cancel)) return false;
        uint32_t pos = base + done, T = step - pos % step;
        if (T > n - done) T = n - done;
        for (int c = 0; c < n_cp; c++)
            if (cp[c].at > pos && cp[c].at < pos + T) T = cp[c].at - pos;
        if (!live_eval(e, ids + done, T, err, sizeof err)) {
            job_fail(j, 500, err);
            return false;
        }
        done += T;
        for (int c = 0; c < n_cp; c++) {
            if (!cp[c].at || base + done != cp[c].at) continue;
            if (cp[c].disk && kvdisk_save(e->kv, e->s, e->live_text.p, e->live_text.n, cp[c].reason) &&
                cp[c].at > e->saved)
                e->saved = cp[c].at;
            if (cp[c].rewind && e->rewind_path) rewind_save(e);
        }
        job_push(j, (srv_event){.kind = EV_PROGRESS, .index = (int)done, .len = n});
        double t = now_s();
        if (t - last_log >= 2.0 && done < n) {
            srv_log("%s prefill %u/%u tokens (%.0f%%), %.1f tokens/s", j->id, done, n, 100.0 * done / n,
                    done / (t - t0));
            last_log = t;
        }
    }
    return true;
}

/* ------------------------------------------------------------------------ */
/* generation */

typedef struct {
    srv_engine *e;
    srv_job *j;
    ds4_utf8_stream u8[2]; /* reasoning, content */
    char **ids;            /* tool call ids, by index */
    int n_ids;
    const char *id_prefix;
    int cur;               /* call whose invoke is open (-1: none) */
    sbuf streamed;         /* its arguments sent so far (raw bytes) */
    sbuf prefix;           /* scratch */
} gen_ctx;

static const char *memfind(const char *s, size_t n, const char *m, size_t ml) {
    if (ml == 0 || n < ml) return NULL;
    for (const char *q = s; (q = memchr(q, m[0], (size_t)(s + n - q))) != NULL; q++) {
        if ((size_t)(s + n - q) < ml) return NULL;
        if (!memcmp(q, m, ml)) return q;
    }
    return NULL;
}

static const char *memfind_last(const char *s, size_t n, const char *m) {
    size_t ml = strlen(m);
    if (n < ml) return NULL;
    for (size_t i = n - ml + 1; i-- > 0;)
        if (s[i] == m[0] && !memcmp(s + i, m, ml)) return s + i;
    return NULL;
}

static void on_dsml(void *ud, const ds4_dsml_event *ev) {
    gen_ctx *g = ud;
    if (ev->kind == DS4_DSML_REASONING || ev->kind == DS4_DSML_CONTENT) {
        int ch = ev->kind == DS4_DSML_CONTENT;
        char *out = malloc(4 * ev->len + 16);
        size_t n = ds4_utf8_stream_feed(&g->u8[ch], ev->text, ev->len, out);
        if (!n) {
            free(out);
            return;
        }
        out[n] = 0;
        job_push(g->j, (srv_event){.kind = ch ? EV_CONTENT : EV_REASONING, .text = out, .len = n});
        return;
    }
    if (ev->index >= g->n_ids) {
        g->ids = realloc(g->ids, (size_t)(ev->index + 1) * sizeof *g->ids);
        while (g->n_ids <= ev->index) g->ids[g->n_ids++] = NULL;
    }
    if (!g->ids[ev->index]) {
        char id[64];
        random_id(id, sizeof id, g->id_prefix, 16);
        g->ids[ev->index] = strdup(id);
    }
    char *name = utf8_sanitize(ev->name, ev->name_len, NULL);
    if (ev->kind == DS4_DSML_TOOL_CALL_BEGIN) {
        g->cur = ev->index;
        g->streamed.n = 0;
        job_push(g->j, (srv_event){.kind = EV_TOOL_BEGIN, .index = ev->index, .id = strdup(g->ids[ev->index]),
                                   .name = name});
    } else {
        /* the fragment that turns what was streamed into the final text; after
         * a repeated key the streamed object only needs closing */
        const char *rest = ev->arguments;
        size_t rn = ev->arguments_len;
        if (g->cur == ev->index && g->streamed.n) {
            bool prefix = g->streamed.n <= rn && !memcmp(ev->arguments, g->streamed.p, g->streamed.n);
            rest = prefix ? ev->arguments + g->streamed.n : "}";
            rn = prefix ? rn - g->streamed.n : 1;
        }
        char *args = utf8_sanitize(ev->arguments, ev->arguments_len, NULL);
        size_t tl;
        char *tail = utf8_sanitize(rest, rn, &tl);
        job_push(g->j, (srv_event){.kind = EV_TOOL_CALL, .index = ev->index, .id = strdup(g->ids[ev->index]),
                                   .name = name, .args = args, .text = tail, .len = tl});
        g->cur = -1;
        g->streamed.n = 0;
    }
}

/* After a feed: send the arguments of the open invoke's completed parameters
 * that were not sent yet. raw[0..fed) is what the parser has seen. */
static void stream_args(gen_ctx *g, const char *raw, size_t fed, size_t from) {
    if (g->cur < 0) return;
    const char *inv = memfind_last(raw + from, fed - from, "<" DSML "invoke");
    if (!inv) return;
    dsml_args_prefix(inv, (size_t)(raw + fed - inv), &g->prefix);
    if (g->prefix.n <= g->streamed.n || memcmp(g->prefix.p, g->streamed.p ? g->streamed.p : "", g->streamed.n)) return;
    size_t fl;
    char *frag = utf8_sanitize(g->prefix.p + g->streamed.n, g->prefix.n - g->streamed.n, &fl);
    job_push(g->j, (srv_event){.kind = EV_TOOL_ARGS, .index = g->cur, .id = strdup(g->ids[g->cur]), .text = frag,
                               .len = fl});
    g->streamed.n = 0;
    sb_put(&g->streamed, g->prefix.p, g->prefix.n);
}

static void flush_u8(gen_ctx *g) {
    for (int ch = 0; ch < 2; ch++) {
        char *out = malloc(16);
        size_t n = ds4_utf8_stream_flush(&g->u8[ch], out);
        if (!n) {
            free(out);
            continue;
        }
        out[n] = 0;
        job_push(g->j, (srv_event){.kind = ch ? EV_CONTENT : EV_REASONING, .text = out, .len = n});
    }
}

/* Inside DSML syntax (not inside a parameter value) of an open tool block? */
static bool in_dsml_syntax(const char *t, size_t n) {
    const char *open = memfind_last(t, n, M_BLOCK_OPEN);
    if (!open) return false;
    size_t from = (size_t)(open - t);
    if (memfind(open, n - from, M_BLOCK_CLOSE, sizeof M_BLOCK_CLOSE - 1)) return false;
    const char *p = memfind_last(open, n - from, M_PARAM_OPEN);
    if (!p) return true;
    size_t pf = (size_t)(p - t);
    const char *gt = memchr(p, '>', n - pf);
    if (!gt) return true; /* inside the parameter header */
    return memfind(gt, n - (size_t)(gt - t), M_PARAM_CLOSE, sizeof M_PARAM_CLOSE - 1) != NULL;
}

/* tool_choice required / named (srv_request.tool_force): the answer starts
 * with a call. Its opening, up to the invoke's name (with the name when one
 * is named), goes through the forced tokens (generate's `force`) once the
 * reasoning is over; for "required" the name is then taken greedily among
 * the tokens that keep it a prefix of some tool's `NAME">` + newline, until
 * one is complete. The parameters are the model's (DSML syntax greedy, as
 * always). */
typedef struct {
    int phase;        /* 0 before the answer, 1 forcing the opening, 2 choosing the name, 3 done */
    size_t name_from; /* raw offset where the name starts (phase 2) */
} tool_force;

/* Whether the name region so far (have, nh bytes) followed by a token's
 * bytes is still a prefix of some allowed tool's NAME">\n (force_names);
 * *done: it then holds a whole NAME"> */
static bool tool_name_ok(const srv_request *rq, const char *have, size_t nh, const char *tb, size_t tl, bool *done) {
    *done = false;
    bool ok = false;
    for (int k = 0; k < rq->n_force_names; k++) {
        const char *nm = rq->force_names[k];
        const size_t nn = strlen(nm), full = nn + 3; /* NAME">\n */
        if (nh + tl > full) continue;
        if (nh > nn ? memcmp(have, nm, nn) || memcmp(have + nn, "\">\n", nh - nn) : memcmp(have, nm, nh)) continue;
        bool match = true; /* the token's bytes against the rest of NAME">\n */
        for (size_t i = 0; i < tl && match; i++) {
            const size_t pos = nh + i;
            match = tb[i] == (pos < nn ? nm[pos] : "\">\n"[pos - nn]);
        }
        if (!match) continue;
        ok = true;
        if (nh + tl >= nn + 2) *done = true;
    }
    return ok;
}

static void generate(srv_engine *e, srv_job *j) {
    srv_request *rq = j->req;
    /* a continued assistant turn is past its reasoning: output is content */
    const bool thinking = j->prompt.thinking && !j->prompt.continues, tools = rq->tools_json != NULL;
    gen_ctx g = {.e = e, .j = j, .id_prefix = rq->api == API_MESSAGES ? "toolu_" : "call_", .cur = -1};
    ds4_utf8_stream_init(&g.u8[0], true);
    ds4_utf8_stream_init(&g.u8[1], true);
    ds4_dsml_parser *parser = ds4_dsml_parser_new(thinking, on_dsml, &g);
    ds4_dsml_parser_feed(parser, "", 0); /* gives it a buffer: finish() on a never-fed parser memmoves NULL */
    ds4_sampler_params sp = rq->sp;
    if (!rq->seed_set) {
        char hex[24];
        random_id(hex, sizeof hex, "", 8);
        sp.seed = strtoull(hex, NULL, 16);
    }
    ds4_sampler *sampler = ds4_sampler_new(&sp);
    ds4_sampler *greedy = ds4_sampler_new(&(ds4_sampler_params){.temperature = 0, .top_p = 1});
    ds4_tokens force = {0};
    if (rq->force) ds4_tokenize(e->tok, rq->force, strlen(rq->force), true, &force);
    size_t fi = 0;
    tool_force tf = {.phase = tools && rq->tool_force ? 0 : 3};
    size_t maxstop = 0;
    for (int i = 0; i < rq->n_stop; i++)
        if (strlen(rq->stop[i]) > maxstop) maxstop = strlen(rq->stop[i]);
    uint32_t n_ctx = ds4_session_n_ctx(e->s);
    uint32_t max_gen = rq->max_tokens ? rq->max_tokens : e->cfg->max_output;
    if (max_gen > e->cfg->max_output) max_gen = e->cfg->max_output;
    sbuf raw = {0};
    size_t fed = 0, think_end = thinking ? (size_t)-1 : 0, cut = (size_t)-1;
    uint32_t n_gen = 0;
    const char *finish = NULL;
    char err[256];
    for (;;) {
        if (atomic_load(&j->cancel)) {
            finish = "cancelled";
            break;
        }
        if (n_gen >= max_gen) {
            finish = "length";
            break;
        }
        const float *logits = ds4_session_logits(e->s);
        bool tool_forced = false;
        if (tf.phase == 0 && fi >= force.n && think_end != (size_t)-1) { /* the answer begins: open the call */
            sbuf open = {0};
            sb_printf(&open, "\n\n%s\n<" DSML "invoke name=\"", M_BLOCK_OPEN);
            ds4_span name = {open.n, open.n}; /* the client's name: plain text, as the prompt renders it */
            if (rq->tool_force == 2) {
                sb_puts(&open, rq->tool_force_name);
                name.end = open.n;
                sb_puts(&open, "\">\n");
            }
            force.n = 0; /* (the request's forced tokens are all out) */
            fi = 0;
            ds4_tokenize_spans(e->tok, open.p, open.n, &name, name.end > name.start, &force);
            sb_free(&open);
            tf.phase = 1;
        }
        if (tf.phase == 1 && fi >= force.n) {
            tf.phase = rq->tool_force == 2 ? 3 : 2;
            tf.name_from = raw.n;
        }
        if (tf.phase == 2) {
            bool any = false, done;
            for (uint32_t v = 0; v < e->vocab; v++) {
                size_t tl;
                const char *tb = ds4_token_bytes(e->tok, (int32_t)v, &tl);
                const bool ok = tl > 0 && tool_name_ok(rq, raw.p + tf.name_from, raw.n - tf.name_from, tb, tl, &done);
                e->masked[v] = ok ? logits[v] : -INFINITY;
                any = any || ok;
            }
            if (any) {
                logits = e->masked;
                tool_forced = true;
            } else {
                tf.phase = 3; /* (cannot happen with byte tokens: leave the name to the model) */
            }
        }
        if (fi < force.n) {
            for (uint32_t v = 0; v < e->vocab; v++) e->masked[v] = -INFINITY;
            int32_t f = force.ids[fi++];
            if (f >= 0 && (uint32_t)f < e->vocab) e->masked[f] = 0;
            logits = e->masked;
        }
        /* DSML after the reasoning, or (tolerated, like the parser does) inside
         * reasoning that was never closed */
        size_t dsml_from = think_end != (size_t)-1 ? think_end : 0;
        bool syntax = tools && in_dsml_syntax(raw.p + dsml_from, raw.n - dsml_from);
        int32_t t = ds4_sampler_sample(syntax || tool_forced ? greedy : sampler, logits, e->vocab);
        n_gen++;
        if (n_gen == 1) j->t_first = now_s();
        if (t == e->eos) {
            finish = "stop";
            break;
        }
        if (think_end == (size_t)-1) j->reasoning_tokens++;
        size_t tl;
        const char *tb = ds4_token_bytes(e->tok, t, &tl);
        sb_put(&raw, tb, tl);
        if (tf.phase == 2) {
            bool done = false;
            if (!tool_name_ok(rq, raw.p + tf.name_from, raw.n - tf.name_from - tl, tb, tl, &done) || done) tf.phase = 3;
        }
        if (think_end == (size_t)-1 && raw.n >= 8 && !memcmp(raw.p + raw.n - 8, M_THINK_END, 8)) think_end = raw.n;
        /* stop strings, on the answer */
        size_t safe = raw.n;
        if (rq->n_stop && think_end != (size_t)-1) {
            size_t from = fed > think_end ? fed : think_end;
            for (int i = 0; i < rq->n_stop; i++) {
                const char *hit = memfind(raw.p + from, raw.n - from, rq->stop[i], strlen(rq->stop[i]));
                if (hit && (size_t)(hit - raw.p) < cut) {
                    cut = (size_t)(hit - raw.p);
                    j->stop_seq = rq->stop[i];
                }
            }
            if (cut != (size_t)-1) {
                finish = "stop";
                break;
            }
            safe = raw.n - (maxstop - 1 < raw.n - from ? maxstop - 1 : raw.n - from);
        }
        if (safe > fed) {
            ds4_dsml_parser_feed(parser, raw.p + fed, safe - fed);
            fed = safe;
            stream_args(&g, raw.p, fed, think_end != (size_t)-1 ? think_end : 0);
        }
        dsml_from = think_end != (size_t)-1 ? think_end : 0;
        bool closed = tools && memfind(raw.p + dsml_from, raw.n - dsml_from, M_BLOCK_CLOSE, sizeof M_BLOCK_CLOSE - 1);
        if (ds4_session_n_tokens(e->s) + 1 > n_ctx) {
            finish = "length";
            break;
        }
        if (!live_eval(e, &t, 1, err, sizeof err)) {
            job_fail(j, 500, err);
            finish = "error";
            break;
        }
        if (closed) {
            finish = "tool_calls";
            break;
        }
    }
    size_t end = cut != (size_t)-1 ? cut : raw.n;
    if (end > fed) ds4_dsml_parser_feed(parser, raw.p + fed, end - fed);
    ds4_dsml_parser_finish(parser);
    flush_u8(&g);
    int n_calls = ds4_dsml_parser_n_calls(parser);
    if (n_calls > 0 && (!strcmp(finish, "stop") || !strcmp(finish, "tool_calls"))) finish = "tool_calls";
    else if (!strcmp(finish, "tool_calls")) finish = "stop";
    if (n_calls > 0 && !j->prompt.continues) {
        /* remember the turn as the live session holds it: up to the block's end */
        const char *close = memfind_last(raw.p ? raw.p : "", raw.n, M_BLOCK_CLOSE);
        size_t keep = close ? (size_t)(close - raw.p) + sizeof M_BLOCK_CLOSE - 1 : raw.n;
        toolmem_put(e->tm, (const char *const *)g.ids, (size_t)g.n_ids, raw.p, keep, thinking);
    }
    if (!j->finish) j->finish = finish;
    j->completion_tokens = n_gen;
    trace_write(j->id, "generated", raw.p ? raw.p : "", raw.n);
    for (int i = 0; i < g.n_ids; i++) free(g.ids[i]);
    free(g.ids);
    sb_free(&g.streamed);
    sb_free(&g.prefix);
    sb_free(&raw);
    ds4_tokens_free(&force);
    ds4_sampler_free(sampler);
    ds4_sampler_free(greedy);
    ds4_dsml_parser_free(parser);
}

/* ------------------------------------------------------------------------ */
/* one job */

static void run_job(srv_engine *e, srv_job *j) {
    srv_prompt *P = &j->prompt;
    j->t_start = now_s();
    trace_write(j->id, "prompt", P->text, P->len);
    uint32_t live_n = ds4_session_n_tokens(e->s);
    splice_t sp = splice(e, ds4_session_tokens(e->s), e->live_offs, live_n, e->live_text.p ? e->live_text.p : "", P);
    bool extend = sp.keep == live_n && live_n > 0;
    size_t live_bytes = extend ? e->live_offs[sp.keep] : 0;
    uint32_t d_tokens = 0;
    size_t d_bytes = 0;
    char *d_path = e->kv ? kvdisk_lookup(e->kv, P->text, P->len, &d_tokens, &d_bytes) : NULL;
    uint32_t covered = 0; /* prompt tokens known to be on disk */
    if (d_path) covered = d_tokens;
    if (extend && e->saved > covered) covered = e->saved;
    /* the source that covers the most of the prompt's text */
    const char *load = NULL, *source = "live";
    size_t best = live_bytes;
    if (d_path && d_bytes > best) {
        load = d_path;
        source = "disk";
        best = d_bytes;
    }
    size_t rb = e->rewind_text.n;
    if (e->rewind_path && rb && rb > best && rb <= P->len && !memcmp(e->rewind_text.p, P->text, rb)) {
        load = e->rewind_path;
        source = "rewind";
    }
    if (!extend || load) {
        /* the live session goes: keep it on disk if it holds enough work that
         * is neither saved nor shared with the new prompt (another
         * conversation is taking its place) */
        uint32_t shared = sp.keep, unsaved_from = e->saved > shared ? e->saved : shared;
        if (e->kv && live_n >= unsaved_from + e->cfg->kv_min_tokens)
            kvdisk_save(e->kv, e->s, e->live_text.p, e->live_text.n, "evict");
        free(sp.suffix);
        sp = (splice_t){0};
        live_reset(e);
        if (load) {
            char err[256];
            if (ds4_session_load(e->s, load, err, sizeof err)) {
                live_sync(e);
                sp = splice(e, ds4_session_tokens(e->s), e->live_offs, ds4_session_n_tokens(e->s), e->live_text.p, P);
                if (sp.keep == ds4_session_n_tokens(e->s)) {
                    if (load == d_path) {
                        kvdisk_touch(e->kv, d_path);
                        e->saved = sp.keep;
                    }
                    j->cache_source = source;
                } else { /* should not happen: the checkpoint's text is a prefix */
                    free(sp.suffix);
                    sp = (splice_t){0};
                    live_reset(e);
                }
            } else if (load == d_path) {
                kvdisk_reject(e->kv, d_path, err);
                live_reset(e);
            } else {
                srv_log("rewind checkpoint: %s", err);
                e->rewind_text.n = 0;
                live_reset(e);
            }
        }
    } else {
        j->cache_source = "live";
    }
    free(d_path);
    const int32_t *suffix = sp.canonical ? P->ids + sp.j : sp.suffix;
    uint32_t n_suffix = sp.canonical ? P->n - sp.j : sp.n_suffix;
    if (sp.keep == 0 && ds4_session_n_tokens(e->s) == 0) {
        suffix = P->ids;
        n_suffix = P->n;
    }
    j->cached_tokens = sp.keep;
    j->prompt_tokens = sp.keep + n_suffix;
    if (!j->cached_tokens) j->cache_source = "none";
    if (j->prompt_tokens >= ds4_session_n_ctx(e->s)) {
        char msg[200];
        snprintf(msg, sizeof msg, "the prompt is %u tokens; this server's context is %u tokens", j->prompt_tokens,
                 ds4_session_n_ctx(e->s));
        job_fail(j, 400, msg);
        free(sp.suffix);
        return;
    }
    /* checkpoints: before the last <｜Assistant｜> of the prompt (the prefix a
     * later request of this conversation will share): the rewind checkpoint,
     * and a disk save (cold, or continued every --kv-cache-continued-interval
     * tokens); and the end of the system block (system prompt and tools),
     * before the first <｜User｜>, which new conversations of the same agent
     * share */
    checkpoint cp[2] = {{0}};
    for (uint32_t i = n_suffix; i-- > 0;)
        if (suffix[i] == e->assistant_tok) {
            cp[0].at = sp.keep + i;
            break;
        }
    if (cp[0].at <= sp.keep) cp[0].at = 0;
    uint32_t need = covered ? e->cfg->kv_interval_tokens : e->cfg->kv_min_tokens;
    cp[0].rewind = true;
    cp[0].disk = e->kv && cp[0].at && cp[0].at >= e->cfg->kv_min_tokens && cp[0].at >= covered + need;
    cp[0].reason = covered ? "continued" : "cold";
    if (e->kv && !covered) {
        for (uint32_t i = 0; i < n_suffix; i++)
            if (suffix[i] == e->user_tok) {
                if (i > 0 && sp.keep + i >= e->cfg->kv_min_tokens && sp.keep + i < cp[0].at)
                    cp[1] = (checkpoint){.at = sp.keep + i, .disk = true, .reason = "system"};
                break;
            }
    }
    if (n_suffix && !prefill(e, j, suffix, n_suffix, cp, 2)) {
        free(sp.suffix);
        if (!j->finish) j->finish = "cancelled";
        return;
    }
    free(sp.suffix);
    j->t_prefill = now_s();
    generate(e, j);
}

static void log_job(srv_engine *e, srv_job *j) {
    double pre = j->t_prefill > 0 ? j->t_prefill - j->t_start : 0;
    double gen = j->t_prefill > 0 ? j->t_end - j->t_prefill : 0;
    uint32_t pf = j->prompt_tokens - j->cached_tokens;
    srv_log("%s %s: prompt %u tokens (cached %u, %s), prefill %u in %.2fs (%.1f t/s), generated %u in %.2fs "
            "(%.1f t/s), ttft %.3fs, queued %.3fs, finish %s%s%s",
            j->id, j->path ? j->path : "", j->prompt_tokens, j->cached_tokens, j->cache_source, pf, pre,
            pre > 0 ? pf / pre : 0.0, j->completion_tokens, gen, gen > 0 ? j->completion_tokens / gen : 0.0,
            j->t_first > 0 ? j->t_first - j->t_queued : 0.0, j->t_start - j->t_queued, j->finish ? j->finish : "?",
            j->err[0] ? ": " : "", j->err);
    (void)e;
}

static void *worker(void *arg) {
    srv_engine *e = arg;
    for (;;) {
        pthread_mutex_lock(&e->mu);
        while (!e->head && !e->stopping) pthread_cond_wait(&e->cv, &e->mu);
        if (!e->head) {
            pthread_mutex_unlock(&e->mu);
            break;
        }
        srv_job *j = e->head;
        e->head = j->next;
        if (!e->head) e->tail = NULL;
        e->qlen--;
        e->current = j;
        if (e->stopping) atomic_store(&j->cancel, true);
        pthread_mutex_unlock(&e->mu);
        if (atomic_load(&j->cancel)) {
            j->finish = "cancelled";
            j->t_start = now_s();
        } else {
            run_job(e, j);
        }
        pthread_mutex_lock(&e->mu);
        e->current = NULL;
        pthread_mutex_unlock(&e->mu);
        job_finish(j);
        log_job(e, j);
        job_unref(j);
    }
    return NULL;
}

srv_engine *engine_start(const srv_config *cfg, ds4_model *m, const ds4_tokenizer *tok, srv_toolmem *tm,
                         srv_kvdisk *kv, char *err, size_t errlen) {
    srv_engine *e = calloc(1, sizeof *e);
    e->cfg = cfg;
    e->m = m;
    e->tok = tok;
    e->tm = tm;
    e->kv = kv;
    e->s = ds4_session_new(m, cfg->ctx, err, errlen);
    if (!e->s) {
        free(e);
        return NULL;
    }
    e->vocab = ds4_model_vocab_size(m);
    char mem[256];
    ds4_model_describe(m, e->s, mem, sizeof mem);
    srv_log("%s", mem);
    e->live_offs = calloc((size_t)cfg->ctx + 1, sizeof *e->live_offs);
    e->masked = malloc(e->vocab * sizeof *e->masked);
    e->eos = ds4_tokenizer_eos(tok);
    e->assistant_tok = ds4_tokenizer_find(tok, ASSISTANT_TOK, strlen(ASSISTANT_TOK));
    e->user_tok = ds4_tokenizer_find(tok, USER_TOK, strlen(USER_TOK));
    if (cfg->rewind) {
        const char *dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
        size_t n = strlen(dir) + 64;
        e->rewind_path = malloc(n);
        snprintf(e->rewind_path, n, "%s/ds4-server-rewind-%ld.ds4s", dir, (long)getpid());
    }
    sb_put(&e->live_text, "", 0);
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    if (pthread_create(&e->th, NULL, worker, e) != 0) {
        snprintf(err, errlen, "cannot start the engine thread");
        ds4_session_free(e->s);
        free(e);
        return NULL;
    }
    return e;
}

bool engine_submit(srv_engine *e, srv_job *j) {
    pthread_mutex_lock(&e->mu);
    if (e->stopping || e->qlen >= e->cfg->max_queue) {
        pthread_mutex_unlock(&e->mu);
        return false;
    }
    pthread_mutex_lock(&j->mu);
    j->refs++;
    pthread_mutex_unlock(&j->mu);
    j->next = NULL;
    if (e->tail) e->tail->next = j; else e->head = j;
    e->tail = j;
    e->qlen++;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    return true;
}

int engine_queue_len(srv_engine *e) {
    pthread_mutex_lock(&e->mu);
    int n = e->qlen;
    pthread_mutex_unlock(&e->mu);
    return n;
}

void engine_stop(srv_engine *e) {
    if (!e) return;
    pthread_mutex_lock(&e->mu);
    e->stopping = true;
    for (srv_job *j = e->head; j; j = j->next) atomic_store(&j->cancel, true);
    if (e->current) atomic_store(&e->current->cancel, true);
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
    pthread_join(e->th, NULL);
    uint32_t n = ds4_session_n_tokens(e->s);
    if (e->kv && n >= e->saved + e->cfg->kv_min_tokens)
        kvdisk_save(e->kv, e->s, e->live_text.p, e->live_text.n, "shutdown");
}

void engine_free(srv_engine *e) {
    if (!e) return;
    ds4_session_free(e->s);
    if (e->rewind_path) unlink(e->rewind_path);
    free(e->rewind_path);
    sb_free(&e->rewind_text);
    sb_free(&e->live_text);
    free(e->live_offs);
    free(e->masked);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
    free(e);
}
