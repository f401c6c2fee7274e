/* session.c - model loading, sessions (KV state), evaluation with chunked
 * prefill, truncation, and session files.
 *
 * Evaluation splits the new tokens into chunks whose boundaries sit at
 * absolute multiples of the prefill chunk size, so the same prompt is always
 * cut the same way whether it arrives at once or as continuations. Input is
 * validated before any state changes: a bad token id or a context overflow
 * leaves the session as it was.
 *
 * Session file (docs/SESSION.md), little-endian:
 *   "DS4S" u32 version, u64 model fingerprint, u32 n_tokens, u32 n_ctx,
 *   u32 n_layer, u32 head_dim, u32 indexer_head_dim, u32 vocab, u32 n_swa,
 *   u32 exact, i32 tokens[n_tokens], f32 logits[vocab],
 *   per layer: raw rows of positions [max(0, n - n_swa), n) in order;
 *     compressed layers: u32 n_comp, rows, frontier kv, frontier scores;
 *     ratio-4 layers:    u32 n_idx,  rows, frontier kv, frontier scores;
 *   u64 FNV-1a checksum of everything before it.
 * Saving writes NAME.tmp.PID and renames it into place.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "engine.h"
#include "ops.h"

#define SESSION_MAGIC 0x53345344u /* "DS4S" */
#define SESSION_VERSION 1

static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ------------------------------------------------------------------------ */
/* model */

ds4_model *ds4_model_load(const char *path, const ds4_model_params *params, char *err, size_t errlen) {
    ds4_model_weights *w = ds4_model_weights_open(path, err, errlen);
    if (!w) return NULL;
    return ds4_model_from_weights(w, params, err, errlen);
}

ds4_model *ds4_model_from_weights(ds4_model_weights *w, const ds4_model_params *params, char *err, size_t errlen) {
    const ds4_backend *backend = ds4_backend_select(params ? params->backend : NULL, err, errlen);
    if (!backend) {
        ds4_model_weights_close(w);
        return NULL;
    }
    ds4_model *m = calloc(1, sizeof *m);
    m->w = w;
    m->hp = &w->hp;
    m->backend = backend;
    int n_threads = params && params->n_threads > 0 ? params->n_threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    m->pool = ds4_pool_new(n_threads > 0 ? n_threads : 1);
    m->exact = params && params->exact;
    m->f16_rounding = !m->exact && !(params && params->no_f16_rounding);
    m->prefill_chunk = params && params->prefill_chunk > 0     ? params->prefill_chunk
                       : backend->default_prefill_chunk > 0 ? backend->default_prefill_chunk
                                                            : 256;
    m->prefill_chunk_auto = !(params && params->prefill_chunk > 0);
    const ds4_hparams *hp = m->hp;
    m->rope_main = malloc((hp->n_rot / 2) * sizeof(float));
    m->rope_comp = malloc((hp->n_rot / 2) * sizeof(float));
    ds4_rope_inv_freq(m->rope_main, (int)hp->n_rot, hp->rope_freq_base, 1.0, 0, 0, 0);
    ds4_rope_inv_freq(m->rope_comp, (int)hp->n_rot, hp->compress_rope_freq_base, hp->rope_scale_factor,
                      (double)hp->rope_orig_ctx, hp->yarn_beta_fast, hp->yarn_beta_slow);
    if (backend->model_init && !backend->model_init(m, err, errlen)) {
        m->backend = &ds4_backend_cpu; /* nothing of the failed backend to free */
        ds4_model_free(m);
        return NULL;
    }
    return m;
}

void ds4_model_free(ds4_model *m) {
    if (!m) return;
    if (m->backend && m->backend->model_free) m->backend->model_free(m);
    ds4_pool_free(m->pool);
    free(m->rope_main);
    free(m->rope_comp);
    ds4_model_weights_close(m->w);
    free(m->owned);
    free(m);
}

const char *ds4_model_backend(const ds4_model *m) { return m->backend->name; }

void ds4_model_describe(const ds4_model *m, const ds4_session *s, char *buf, size_t buflen) {
    if (!buflen) return;
    buf[0] = 0;
    if (m->backend->describe) m->backend->describe(m, s, buf, buflen);
    else snprintf(buf, buflen, "backend %s", m->backend->name);
}

uint32_t ds4_model_vocab_size(const ds4_model *m) { return m->hp->n_vocab; }
uint32_t ds4_model_layer_count(const ds4_model *m) { return m->hp->n_layer; }

bool ds4_model_indexer_shape(const ds4_model *m, uint32_t *n_layers, uint32_t *top_k) {
    uint32_t n = 0;
    for (uint32_t il = 0; il < m->hp->n_layer; il++) n += m->hp->compress_ratio[il] == 4;
    *n_layers = n;
    *top_k = m->hp->indexer_top_k;
    return n > 0;
}

/* FNV-1a over the hyper-parameters and the tensor table: sessions only load
 * into the model (same shapes and types) that made them. */
static uint64_t fnv1a(uint64_t h, const void *p, size_t n) {
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

static uint64_t model_fingerprint(const ds4_model *m) {
    uint64_t h = 1469598103934665603ull;
    h = fnv1a(h, m->hp, sizeof *m->hp);
    for (uint64_t i = 0; m->w->file && i < gguf_n_tensors(m->w->file); i++) {
        const gguf_tensor *t = gguf_tensor_at(m->w->file, i);
        h = fnv1a(h, t->name, strlen(t->name));
        h = fnv1a(h, &t->type, sizeof t->type);
        h = fnv1a(h, t->ne, sizeof t->ne);
    }
    return h;
}

/* ------------------------------------------------------------------------ */
/* session */

void ds4_layer_state_reset_frontier(const ds4_hparams *hp, uint32_t il, ds4_layer_state *st) {
    const uint32_t ratio = hp->compress_ratio[il];
    if (!ratio) return;
    const uint32_t c = ratio == 4 ? 2 : 1;
    size_t n = (size_t)c * ratio * c * hp->head_dim;
    memset(st->comp_kv, 0, n * sizeof(float));
    for (size_t i = 0; i < n; i++) st->comp_sc[i] = -INFINITY;
    if (ratio == 4) {
        n = (size_t)c * ratio * c * hp->indexer_head_dim;
        memset(st->idx_kv, 0, n * sizeof(float));
        for (size_t i = 0; i < n; i++) st->idx_sc[i] = -INFINITY;
    }
}

static void session_reset(ds4_session *s) {
    const ds4_hparams *hp = s->m->hp;
    s->n_tokens = 0;
    s->has_logits = false;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        s->ls[il].n_comp = 0;
        s->ls[il].n_idx = 0;
        ds4_layer_state_reset_frontier(hp, il, &s->ls[il]);
    }
    if (s->m->backend->session_reset) s->m->backend->session_reset(s);
}

ds4_session *ds4_session_new(ds4_model *m, uint32_t n_ctx, char *err, size_t errlen) {
    const ds4_hparams *hp = m->hp;
    if (n_ctx < 1 || n_ctx > (1u << 30)) {
        set_err(err, errlen, "context size %u is out of range [1, 2^30]", n_ctx);
        return NULL;
    }
    ds4_session *s = calloc(1, sizeof *s);
    s->m = m;
    s->n_ctx = n_ctx;
    s->raw_cap = hp->n_swa + (uint32_t)m->prefill_chunk;
    /* the device budget first: its message says what does not fit */
    if (m->backend->session_init && !m->backend->session_init(s, err, errlen)) {
        ds4_session_free(s);
        return NULL;
    }
    s->tokens = malloc((size_t)n_ctx * sizeof(int32_t));
    s->logits = calloc(hp->n_vocab, sizeof(float));
    s->ls = calloc(hp->n_layer, sizeof(ds4_layer_state));
    bool ok = s->tokens && s->logits && s->ls;
    for (uint32_t il = 0; ok && il < hp->n_layer; il++) {
        ds4_layer_state *st = &s->ls[il];
        const uint32_t ratio = hp->compress_ratio[il], c = ratio == 4 ? 2 : 1;
        st->raw = calloc((size_t)s->raw_cap * hp->head_dim, sizeof(float));
        ok = ok && st->raw;
        if (ratio) {
            const size_t cap = ds4_comp_cap(n_ctx, ratio);
            st->comp = malloc(cap * hp->head_dim * sizeof(float));
            st->comp_kv = malloc((size_t)c * ratio * c * hp->head_dim * sizeof(float));
            st->comp_sc = malloc((size_t)c * ratio * c * hp->head_dim * sizeof(float));
            ok = ok && st->comp && st->comp_kv && st->comp_sc;
            if (ratio == 4) {
                st->idx = malloc(cap * hp->indexer_head_dim * sizeof(float));
                st->idx_kv = malloc((size_t)c * ratio * c * hp->indexer_head_dim * sizeof(float));
                st->idx_sc = malloc((size_t)c * ratio * c * hp->indexer_head_dim * sizeof(float));
                ok = ok && st->idx && st->idx_kv && st->idx_sc;
            }
        }
    }
    if (!ok) {
        set_err(err, errlen, "out of memory for a session of %u tokens", n_ctx);
        ds4_session_free(s);
        return NULL;
    }
    session_reset(s);
    return s;
}

void ds4_session_free(ds4_session *s) {
    if (!s) return;
    if (s->bk && s->m->backend->session_free) s->m->backend->session_free(s);
    if (s->ls)
        for (uint32_t il = 0; il < s->m->hp->n_layer; il++) {
            ds4_layer_state *st = &s->ls[il];
            free(st->raw);
            free(st->comp);
            free(st->comp_kv);
            free(st->comp_sc);
            free(st->idx);
            free(st->idx_kv);
            free(st->idx_sc);
        }
    free(s->ls);
    free(s->tokens);
    free(s->logits);
    free(s);
}

uint32_t ds4_session_n_tokens(const ds4_session *s) { return s->n_tokens; }
uint32_t ds4_session_n_ctx(const ds4_session *s) { return s->n_ctx; }
const int32_t *ds4_session_tokens(const ds4_session *s) { return s->tokens; }
const float *ds4_session_logits(const ds4_session *s) { return s->has_logits ? s->logits : NULL; }

void ds4_session_trace_indexer(ds4_session *s, int32_t *out, uint32_t n_positions) {
    s->trace_topk = out;
    s->trace_positions = out ? n_positions : 0;
}

bool ds4_session_eval(ds4_session *s, const int32_t *tokens, uint32_t n, float *all_logits, char *err, size_t errlen) {
    const ds4_hparams *hp = s->m->hp;
    if (n == 0) return true;
    for (uint32_t i = 0; i < n; i++) {
        if (tokens[i] < 0 || (uint32_t)tokens[i] >= hp->n_vocab) {
            set_err(err, errlen, "token id %d at input position %u is out of range [0, %u)", tokens[i], i, hp->n_vocab);
            return false;
        }
    }
    if ((uint64_t)s->n_tokens + n > s->n_ctx) {
        set_err(err, errlen, "context overflow: %u tokens in the session + %u new exceed the context size of %u",
                s->n_tokens, n, s->n_ctx);
        return false;
    }
    const uint32_t chunk = (uint32_t)s->m->prefill_chunk;
    uint32_t done = 0;
    while (done < n) {
        /* end at the next absolute multiple of the chunk size */
        uint32_t pos = s->n_tokens;
        uint32_t T = chunk - pos % chunk;
        if (T > n - done) T = n - done;
        if (!s->m->backend->forward(s, tokens + done, T, all_logits ? all_logits + (size_t)done * hp->n_vocab : NULL,
                                    err, errlen))
            return false;
        memcpy(s->tokens + s->n_tokens, tokens + done, T * sizeof(int32_t));
        s->n_tokens += T;
        done += T;
    }
    return true;
}

bool ds4_session_truncate(ds4_session *s, uint32_t n_keep, char *err, size_t errlen) {
    if (n_keep >= s->n_tokens) return true;
    /* compressor frontiers and rows cannot be cut in place: replay the prefix */
    int32_t *keep = malloc((size_t)(n_keep ? n_keep : 1) * sizeof(int32_t));
    memcpy(keep, s->tokens, (size_t)n_keep * sizeof(int32_t));
    session_reset(s);
    bool ok = ds4_session_eval(s, keep, n_keep, NULL, err, errlen);
    free(keep);
    return ok;
}

/* ------------------------------------------------------------------------ */
/* session files */

typedef struct {
    FILE *fp;
    uint64_t hash;
    bool ok;
} wstream;

static void ws_put(wstream *w, const void *p, size_t n) {
    if (!w->ok || n == 0) return;
    w->hash = fnv1a(w->hash, p, n);
    if (fwrite(p, 1, n, w->fp) != n) w->ok = false;
}

static void ws_u32(wstream *w, uint32_t v) { ws_put(w, &v, 4); }

bool ds4_session_save(const ds4_session *s, const char *path, char *err, size_t errlen) {
    const ds4_hparams *hp = s->m->hp;
    size_t tl = strlen(path) + 32;
    char *tmp = malloc(tl);
    snprintf(tmp, tl, "%s.tmp.%ld", path, (long)getpid());
    wstream w = {fopen(tmp, "wb"), 1469598103934665603ull, true};
    if (!w.fp) {
        set_err(err, errlen, "%s: cannot create: %s", tmp, strerror(errno));
        free(tmp);
        return false;
    }
    const uint32_t D = hp->head_dim, ID = hp->indexer_head_dim, n = s->n_tokens;
    if (s->m->backend->state_to_host) s->m->backend->state_to_host((ds4_session *)s);
    ws_u32(&w, SESSION_MAGIC);
    ws_u32(&w, SESSION_VERSION);
    uint64_t fp = model_fingerprint(s->m);
    ws_put(&w, &fp, 8);
    ws_u32(&w, n);
    ws_u32(&w, s->n_ctx);
    ws_u32(&w, hp->n_layer);
    ws_u32(&w, D);
    ws_u32(&w, ID);
    ws_u32(&w, hp->n_vocab);
    ws_u32(&w, hp->n_swa);
    ws_u32(&w, s->m->exact ? 1 : 0);
    ws_put(&w, s->tokens, (size_t)n * 4);
    ws_put(&w, s->logits, (size_t)hp->n_vocab * 4);
    const uint32_t first = n > hp->n_swa ? n - hp->n_swa : 0;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        const ds4_layer_state *st = &s->ls[il];
        for (uint32_t p = first; p < n; p++) ws_put(&w, st->raw + (size_t)(p % s->raw_cap) * D, (size_t)D * 4);
        const uint32_t ratio = hp->compress_ratio[il], c = ratio == 4 ? 2 : 1;
        if (ratio) {
            ws_u32(&w, st->n_comp);
            ws_put(&w, st->comp, (size_t)st->n_comp * D * 4);
            ws_put(&w, st->comp_kv, (size_t)c * ratio * c * D * 4);
            ws_put(&w, st->comp_sc, (size_t)c * ratio * c * D * 4);
        }
        if (ratio == 4) {
            ws_u32(&w, st->n_idx);
            ws_put(&w, st->idx, (size_t)st->n_idx * ID * 4);
            ws_put(&w, st->idx_kv, (size_t)c * ratio * c * ID * 4);
            ws_put(&w, st->idx_sc, (size_t)c * ratio * c * ID * 4);
        }
    }
    uint64_t sum = w.hash;
    if (w.ok && fwrite(&sum, 8, 1, w.fp) != 1) w.ok = false;
    if (w.ok && (fflush(w.fp) != 0 || fsync(fileno(w.fp)) != 0)) w.ok = false;
    if (fclose(w.fp) != 0) w.ok = false;
    if (!w.ok || rename(tmp, path) != 0) {
        set_err(err, errlen, "%s: write failed: %s", path, strerror(errno));
        unlink(tmp);
        free(tmp);
        return false;
    }
    free(tmp);
    return true;
}

typedef struct {
    const uint8_t *p, *end;
    bool ok;
} rstream;

static const uint8_t *rs_take(rstream *r, size_t n) {
    if (!r->ok || (size_t)(r->end - r->p) < n) {
        r->ok = false;
        return NULL;
    }
    const uint8_t *q = r->p;
    r->p += n;
    return q;
}

static uint32_t rs_u32(rstream *r) {
    const uint8_t *q = rs_take(r, 4);
    uint32_t v = 0;
    if (q) memcpy(&v, q, 4);
    return v;
}

/* Parses and checks the whole file before touching the session. */
bool ds4_session_load(ds4_session *s, const char *path, char *err, size_t errlen) {
    const ds4_hparams *hp = s->m->hp;
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        set_err(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return false;
    }
    fseek(fp, 0, SEEK_END);
    long size = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    uint8_t *buf = size > 16 ? malloc((size_t)size) : NULL;
    if (!buf || fread(buf, 1, (size_t)size, fp) != (size_t)size) {
        fclose(fp);
        free(buf);
        set_err(err, errlen, "%s: not a session file (too short or unreadable)", path);
        return false;
    }
    fclose(fp);
    bool ok = false;
    uint64_t stored;
    memcpy(&stored, buf + size - 8, 8);
    if (fnv1a(1469598103934665603ull, buf, (size_t)size - 8) != stored) {
        set_err(err, errlen, "%s: checksum mismatch (corrupt or truncated session file)", path);
        goto done;
    }
    rstream r = {buf, buf + size - 8, true};
    if (rs_u32(&r) != SESSION_MAGIC) {
        set_err(err, errlen, "%s: not a DS4 session file", path);
        goto done;
    }
    uint32_t version = rs_u32(&r);
    if (version != SESSION_VERSION) {
        set_err(err, errlen, "%s: session format version %u is not supported (expected %d)", path, version, SESSION_VERSION);
        goto done;
    }
    uint64_t fp_saved = 0;
    const uint8_t *fpb = rs_take(&r, 8);
    if (fpb) memcpy(&fp_saved, fpb, 8);
    if (fp_saved != model_fingerprint(s->m)) {
        set_err(err, errlen, "%s: session was saved with a different model", path);
        goto done;
    }
    const uint32_t n = rs_u32(&r);
    rs_u32(&r); /* saving session's context size: informational */
    const uint32_t nl = rs_u32(&r), D = rs_u32(&r), ID = rs_u32(&r), V = rs_u32(&r), swa = rs_u32(&r), exact = rs_u32(&r);
    if (!r.ok || nl != hp->n_layer || D != hp->head_dim || ID != hp->indexer_head_dim || V != hp->n_vocab || swa != hp->n_swa) {
        set_err(err, errlen, "%s: session header does not match this model", path);
        goto done;
    }
    if (n > s->n_ctx) {
        set_err(err, errlen, "%s: session holds %u tokens, more than this session's context of %u", path, n, s->n_ctx);
        goto done;
    }
    if ((exact != 0) != s->m->exact) {
        set_err(err, errlen, "%s: session was made with %s numerics, this model is loaded with %s", path,
                exact ? "--exact" : "default", s->m->exact ? "--exact" : "default");
        goto done;
    }
    /* first pass: validate sizes and counts */
    const uint8_t *tokens = rs_take(&r, (size_t)n * 4), *logits = rs_take(&r, (size_t)V * 4);
    const uint8_t *body = r.p;
    const uint32_t first = n > swa ? n - swa : 0;
    for (uint32_t il = 0; r.ok && il < nl; il++) {
        rs_take(&r, (size_t)(n - first) * D * 4);
        const uint32_t ratio = hp->compress_ratio[il], c = ratio == 4 ? 2 : 1;
        if (ratio) {
            uint32_t nc = rs_u32(&r);
            if (nc != n / ratio) r.ok = false;
            rs_take(&r, (size_t)nc * D * 4 + 2 * (size_t)c * ratio * c * D * 4);
        }
        if (ratio == 4) {
            uint32_t ni = rs_u32(&r);
            if (ni != n / ratio) r.ok = false;
            rs_take(&r, (size_t)ni * ID * 4 + 2 * (size_t)c * ratio * c * ID * 4);
        }
    }
    if (!r.ok || r.p != r.end) {
        set_err(err, errlen, "%s: session body is inconsistent with its header", path);
        goto done;
    }
    for (uint32_t i = 0; i < n; i++) {
        int32_t t;
        memcpy(&t, tokens + (size_t)i * 4, 4);
        if (t < 0 || (uint32_t)t >= V) {
            set_err(err, errlen, "%s: token %u has id %d, out of range", path, i, t);
            goto done;
        }
    }
    /* second pass: copy in */
    memcpy(s->tokens, tokens, (size_t)n * 4);
    memcpy(s->logits, logits, (size_t)V * 4);
    s->has_logits = n > 0;
    s->n_tokens = n;
    r.p = body;
    for (uint32_t il = 0; il < nl; il++) {
        ds4_layer_state *st = &s->ls[il];
        for (uint32_t p = first; p < n; p++) memcpy(st->raw + (size_t)(p % s->raw_cap) * D, rs_take(&r, (size_t)D * 4), (size_t)D * 4);
        const uint32_t ratio = hp->compress_ratio[il], c = ratio == 4 ? 2 : 1;
        const size_t fr = (size_t)c * ratio * c;
        if (ratio) {
            st->n_comp = rs_u32(&r);
            memcpy(st->comp, rs_take(&r, (size_t)st->n_comp * D * 4), (size_t)st->n_comp * D * 4);
            memcpy(st->comp_kv, rs_take(&r, fr * D * 4), fr * D * 4);
            memcpy(st->comp_sc, rs_take(&r, fr * D * 4), fr * D * 4);
        }
        if (ratio == 4) {
            st->n_idx = rs_u32(&r);
            memcpy(st->idx, rs_take(&r, (size_t)st->n_idx * ID * 4), (size_t)st->n_idx * ID * 4);
            memcpy(st->idx_kv, rs_take(&r, fr * ID * 4), fr * ID * 4);
            memcpy(st->idx_sc, rs_take(&r, fr * ID * 4), fr * ID * 4);
        }
    }
    if (s->m->backend->state_from_host) s->m->backend->state_from_host(s);
    ok = true;
done:
    free(buf);
    return ok;
}
