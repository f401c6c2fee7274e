/* tokenizer.c - DeepSeek V4 byte-level BPE, byte-exact with Hugging Face
 * tokenizers on DeepSeek's tokenizer.json.
 *
 * Layout of this file, in the order text flows through it:
 *
 *   load      token strings -> one arena + string hash; merges -> a pair
 *             hash (left id, right id) -> (rank, merged id); added tokens
 *             (CONTROL / USER_DEFINED) -> a byte trie; every token's decoded
 *             bytes precomputed.
 *   specials  ds4_tokenize scans for added tokens (leftmost-longest, the
 *             Aho-Corasick semantics HF uses) and hands each stretch between
 *             them to the pre-tokenizer.
 *   split     the three Split stages of tokenizer.json, applied in one
 *             forward pass: \p{N}{1,3} pieces, CJK/kana runs, and for
 *             everything else the stage-3 regex
 *               [ASCII punct][A-Za-z]+ | [^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+ |
 *                ?[\p{P}\p{S}]+[\r\n]* | \s*[\r\n]+ | \s+(?!\S) | \s+
 *             evaluated with the backtracking outcome of each alternative
 *             computed directly (no regex engine). Text no alternative matches
 *             becomes a piece of its own, as HF's "Isolated" split does.
 *   bpe       per piece: bytes -> single-byte token ids, then merge the pair
 *             of lowest rank (leftmost on ties) until none applies; short
 *             pieces keep a rank per adjacent pair and rescan, long ones use
 *             a binary heap (same result, O(n log n)).
 *   decode    token -> precomputed bytes; a small UTF-8 stream holds back
 *             incomplete characters.
 */
#include "tokenizer.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unicode_tables.h"

/* ------------------------------------------------------------------------ */
/* small helpers */

static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

bool ds4_tokens_push(ds4_tokens *v, int32_t id) {
    if (v->n == v->cap) {
        size_t nc = v->cap ? v->cap * 2 : 64;
        int32_t *p = realloc(v->ids, nc * sizeof *p);
        if (!p) return false;
        v->ids = p;
        v->cap = nc;
    }
    v->ids[v->n++] = id;
    return true;
}

void ds4_tokens_free(ds4_tokens *v) {
    free(v->ids);
    v->ids = NULL;
    v->n = v->cap = 0;
}

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static inline uint64_t hash_pair(uint64_t key) {
    key ^= key >> 31;
    key *= 0x9E3779B97F4A7C15ull;
    key ^= key >> 29;
    return key;
}

/* ------------------------------------------------------------------------ */
/* the tokenizer */

typedef struct {
    int32_t token;    /* token ending here, or -1 */
    uint32_t child;   /* first child node, 0 = none (node 0 is the root) */
    uint32_t sibling; /* next sibling, 0 = none */
    unsigned char byte;
} trie_node;

struct ds4_tokenizer {
    uint32_t n_vocab;
    char *text;          /* all stored token strings */
    uint64_t *text_off;  /* [n_vocab + 1] */
    uint8_t *type;       /* [n_vocab] ds4_token_type */
    char *bytes;         /* all decoded token bytes */
    uint64_t *bytes_off; /* [n_vocab + 1] */

    uint32_t *str_slots; /* string hash: id + 1, 0 = empty */
    uint64_t str_mask;

    uint64_t *merge_key; /* (left << 32 | right) + 1, 0 = empty */
    uint32_t *merge_rank;
    int32_t *merge_out;
    uint64_t merge_mask;

    int32_t byte_token[256]; /* token of each single byte */

    trie_node *trie; /* added tokens */
    uint32_t n_trie, cap_trie;
    bool has_added;
    uint8_t added_first[256];

    int32_t bos, eos;
};

uint32_t ds4_tokenizer_n_vocab(const ds4_tokenizer *t) { return t->n_vocab; }
int32_t ds4_tokenizer_bos(const ds4_tokenizer *t) { return t->bos; }
int32_t ds4_tokenizer_eos(const ds4_tokenizer *t) { return t->eos; }

const char *ds4_token_text(const ds4_tokenizer *t, int32_t id, size_t *len) {
    if (id < 0 || (uint32_t)id >= t->n_vocab) {
        if (len) *len = 0;
        return NULL;
    }
    if (len) *len = (size_t)(t->text_off[id + 1] - t->text_off[id]);
    return t->text + t->text_off[id];
}

const char *ds4_token_bytes(const ds4_tokenizer *t, int32_t id, size_t *len) {
    if (id < 0 || (uint32_t)id >= t->n_vocab) {
        if (len) *len = 0;
        return NULL;
    }
    if (len) *len = (size_t)(t->bytes_off[id + 1] - t->bytes_off[id]);
    return t->bytes + t->bytes_off[id];
}

ds4_token_type ds4_token_type_of(const ds4_tokenizer *t, int32_t id) {
    if (id < 0 || (uint32_t)id >= t->n_vocab) return DS4_TOKEN_UNUSED;
    return (ds4_token_type)t->type[id];
}

bool ds4_token_is_added(const ds4_tokenizer *t, int32_t id) {
    ds4_token_type ty = ds4_token_type_of(t, id);
    return ty == DS4_TOKEN_CONTROL || ty == DS4_TOKEN_USER_DEFINED;
}

int32_t ds4_tokenizer_find(const ds4_tokenizer *t, const char *s, size_t len) {
    uint64_t h = hash_bytes(s, len) & t->str_mask;
    for (;;) {
        uint32_t v = t->str_slots[h];
        if (!v) return -1;
        int32_t id = (int32_t)(v - 1);
        size_t n;
        const char *p = ds4_token_text(t, id, &n);
        if (n == len && memcmp(p, s, len) == 0) return id;
        h = (h + 1) & t->str_mask;
    }
}

void ds4_tokenizer_free(ds4_tokenizer *t) {
    if (!t) return;
    free(t->text);
    free(t->text_off);
    free(t->type);
    free(t->bytes);
    free(t->bytes_off);
    free(t->str_slots);
    free(t->merge_key);
    free(t->merge_rank);
    free(t->merge_out);
    free(t->trie);
    free(t);
}

/* GPT-2 byte <-> unicode map: printable bytes keep their code point, the other
 * 68 get U+0100.. in increasing byte order. */
static void byte_level_map(uint32_t byte_cp[256]) {
    uint32_t n = 0;
    for (uint32_t b = 0; b < 256; b++) {
        bool keep = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        byte_cp[b] = keep ? b : 256 + n++;
    }
}

static bool merge_insert(ds4_tokenizer *t, uint64_t key, uint32_t rank, int32_t out) {
    uint64_t h = hash_pair(key) & t->merge_mask;
    while (t->merge_key[h]) {
        if (t->merge_key[h] == key + 1) return true; /* duplicate merge: the first rank wins */
        h = (h + 1) & t->merge_mask;
    }
    t->merge_key[h] = key + 1;
    t->merge_rank[h] = rank;
    t->merge_out[h] = out;
    return true;
}

static inline bool merge_lookup(const ds4_tokenizer *t, int32_t a, int32_t b, uint32_t *rank, int32_t *out) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    uint64_t h = hash_pair(key) & t->merge_mask;
    for (;;) {
        uint64_t k = t->merge_key[h];
        if (k == key + 1) {
            *rank = t->merge_rank[h];
            *out = t->merge_out[h];
            return true;
        }
        if (!k) return false;
        h = (h + 1) & t->merge_mask;
    }
}

static bool trie_insert(ds4_tokenizer *t, const char *s, size_t n, int32_t id) {
    uint32_t node = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        uint32_t ch = t->trie[node].child, prev = 0;
        while (ch && t->trie[ch].byte != c) {
            prev = ch;
            ch = t->trie[ch].sibling;
        }
        if (!ch) {
            if (t->n_trie == t->cap_trie) {
                uint32_t nc = t->cap_trie * 2;
                trie_node *p = realloc(t->trie, nc * sizeof *p);
                if (!p) return false;
                t->trie = p;
                t->cap_trie = nc;
            }
            ch = t->n_trie++;
            t->trie[ch] = (trie_node){.token = -1, .child = 0, .sibling = 0, .byte = c};
            if (prev)
                t->trie[prev].sibling = ch;
            else
                t->trie[node].child = ch;
        }
        node = ch;
    }
    if (t->trie[node].token < 0) t->trie[node].token = id; /* first id wins for duplicate strings */
    return true;
}

/* Decoded bytes of a stored token string. */
static size_t decode_token_string(const char *s, size_t n, int type, const int16_t *cp_byte, char *out) {
    if (type == DS4_TOKEN_CONTROL || type == DS4_TOKEN_USER_DEFINED || type == DS4_TOKEN_UNUSED) {
        memcpy(out, s, n);
        return n;
    }
    size_t o = 0, i = 0;
    while (i < n) {
        uint32_t cp;
        size_t l = utf8_decode((const unsigned char *)s + i, n - i, &cp);
        if (!l) {
            out[o++] = s[i++];
            continue;
        }
        if (cp < 512 && cp_byte[cp] >= 0)
            out[o++] = (char)cp_byte[cp];
        else {
            memcpy(out + o, s + i, l);
            o += l;
        }
        i += l;
    }
    return o;
}

ds4_tokenizer *ds4_tokenizer_new(const char *const *tokens, const uint32_t *token_lens, const int32_t *types,
                                 uint32_t n_tokens, const char *const *merges, const uint32_t *merge_lens,
                                 uint32_t n_merges, int32_t bos, int32_t eos, char *err, size_t errlen) {
    if (n_tokens == 0 || n_tokens > 0x7FFFFFFF) {
        set_err(err, errlen, "tokenizer: bad vocabulary size %lld", (long long)n_tokens);
        return NULL;
    }
    ds4_tokenizer *t = calloc(1, sizeof *t);
    if (!t) goto oom;
    t->n_vocab = n_tokens;
    uint64_t total = 0;
    for (uint32_t i = 0; i < n_tokens; i++) total += token_lens[i];
    t->text = malloc(total ? total : 1);
    t->text_off = malloc((n_tokens + 1ull) * sizeof *t->text_off);
    t->type = malloc(n_tokens);
    t->bytes = malloc(total ? total : 1); /* decoding never grows a token */
    t->bytes_off = malloc((n_tokens + 1ull) * sizeof *t->bytes_off);
    uint64_t slots = 1;
    while (slots < 2ull * n_tokens) slots <<= 1;
    t->str_slots = calloc(slots, sizeof *t->str_slots);
    t->str_mask = slots - 1;
    t->cap_trie = 256;
    t->trie = malloc(t->cap_trie * sizeof *t->trie);
    if (!t->text || !t->text_off || !t->type || !t->bytes || !t->bytes_off || !t->str_slots || !t->trie) goto oom;
    t->trie[0] = (trie_node){.token = -1};
    t->n_trie = 1;

    uint32_t byte_cp[256];
    int16_t cp_byte[512];
    byte_level_map(byte_cp);
    for (int i = 0; i < 512; i++) cp_byte[i] = -1;
    for (int b = 0; b < 256; b++) cp_byte[byte_cp[b]] = (int16_t)b;

    uint64_t off = 0, boff = 0;
    for (uint32_t i = 0; i < n_tokens; i++) {
        int ty = types ? types[i] : DS4_TOKEN_NORMAL;
        if (ty < DS4_TOKEN_NORMAL || ty > DS4_TOKEN_BYTE) ty = DS4_TOKEN_NORMAL;
        t->type[i] = (uint8_t)ty;
        t->text_off[i] = off;
        memcpy(t->text + off, tokens[i], token_lens[i]);
        off += token_lens[i];
        t->bytes_off[i] = boff;
        boff += decode_token_string(tokens[i], token_lens[i], ty, cp_byte, t->bytes + boff);
        /* string hash: the first id of a duplicated string wins */
        if (ds4_tokenizer_find(t, tokens[i], token_lens[i]) < 0) {
            uint64_t h = hash_bytes(tokens[i], token_lens[i]) & t->str_mask;
            while (t->str_slots[h]) h = (h + 1) & t->str_mask;
            t->str_slots[h] = i + 1;
        }
        t->text_off[i + 1] = off; /* lets ds4_tokenizer_find see token i */
        if ((ty == DS4_TOKEN_CONTROL || ty == DS4_TOKEN_USER_DEFINED) && token_lens[i] > 0) {
            if (!trie_insert(t, tokens[i], token_lens[i], (int32_t)i)) goto oom;
            t->has_added = true;
            t->added_first[(unsigned char)tokens[i][0]] = 1;
        }
    }
    t->bytes_off[n_tokens] = boff;

    for (int b = 0; b < 256; b++) {
        char u[4];
        size_t l = utf8_encode(byte_cp[b], u);
        t->byte_token[b] = ds4_tokenizer_find(t, u, l);
        if (t->byte_token[b] < 0) {
            set_err(err, errlen, "tokenizer: no token for byte 0x%02x (not a byte-level BPE vocabulary)", b);
            ds4_tokenizer_free(t);
            return NULL;
        }
    }

    slots = 1;
    while (slots < 2ull * (n_merges + 1)) slots <<= 1;
    t->merge_key = calloc(slots, sizeof *t->merge_key);
    t->merge_rank = malloc(slots * sizeof *t->merge_rank);
    t->merge_out = malloc(slots * sizeof *t->merge_out);
    t->merge_mask = slots - 1;
    if (!t->merge_key || !t->merge_rank || !t->merge_out) goto oom;
    char *cat = NULL;
    size_t cat_cap = 0;
    for (uint32_t r = 0; r < n_merges; r++) {
        const char *m = merges[r];
        size_t n = merge_lens[r], sp = 1;
        while (sp < n && m[sp] != ' ') sp++;
        if (n < 3 || sp >= n - 1) {
            free(cat);
            set_err(err, errlen, "tokenizer: merge %u is not \"left right\"", r);
            ds4_tokenizer_free(t);
            return NULL;
        }
        int32_t a = ds4_tokenizer_find(t, m, sp);
        int32_t b = ds4_tokenizer_find(t, m + sp + 1, n - sp - 1);
        if (cat_cap < n) {
            cat_cap = n * 2;
            char *p = realloc(cat, cat_cap);
            if (!p) {
                free(cat);
                goto oom;
            }
            cat = p;
        }
        memcpy(cat, m, sp);
        memcpy(cat + sp, m + sp + 1, n - sp - 1);
        int32_t c = ds4_tokenizer_find(t, cat, n - 1);
        if (a < 0 || b < 0 || c < 0) {
            free(cat);
            set_err(err, errlen, "tokenizer: merge %u uses a string that is not in the vocabulary", r);
            ds4_tokenizer_free(t);
            return NULL;
        }
        merge_insert(t, ((uint64_t)(uint32_t)a << 32) | (uint32_t)b, r, c);
    }
    free(cat);

    static const char bos_s[] = "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>";
    static const char eos_s[] = "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>";
    t->bos = (bos >= 0 && (uint32_t)bos < n_tokens) ? bos : ds4_tokenizer_find(t, bos_s, sizeof bos_s - 1);
    t->eos = (eos >= 0 && (uint32_t)eos < n_tokens) ? eos : ds4_tokenizer_find(t, eos_s, sizeof eos_s - 1);
    return t;

oom:
    set_err(err, errlen, "tokenizer: out of memory");
    ds4_tokenizer_free(t);
    return NULL;
}

ds4_tokenizer *ds4_tokenizer_from_gguf(const gguf_file *f, char *err, size_t errlen) {
    gguf_str s;
    if (gguf_get_str(f, "tokenizer.ggml.model", &s) && !gguf_str_eq(s, "gpt2")) {
        char m[64];
        snprintf(m, sizeof m, "%.*s", (int)(s.len < 60 ? s.len : 60), s.data);
        set_err(err, errlen, "tokenizer: tokenizer.ggml.model '%s' is not byte-level BPE (gpt2)", m);
        return NULL;
    }
    if (gguf_get_str(f, "tokenizer.ggml.pre", &s) && !gguf_str_eq(s, "joyai-llm") && !gguf_str_eq(s, "deepseek-v3")) {
        char m[64];
        snprintf(m, sizeof m, "%.*s", (int)(s.len < 60 ? s.len : 60), s.data);
        set_err(err, errlen,
                "tokenizer: tokenizer.ggml.pre '%s' is not supported (only the DeepSeek V3/V4 split, "
                "'joyai-llm' or 'deepseek-v3')",
                m);
        return NULL;
    }
    const gguf_value *tv = gguf_get(f, "tokenizer.ggml.tokens");
    const gguf_value *mv = gguf_get(f, "tokenizer.ggml.merges");
    const gguf_value *yv = gguf_get(f, "tokenizer.ggml.token_type");
    if (!tv || tv->type != GGUF_TYPE_ARRAY || tv->arr.elem_type != GGUF_TYPE_STRING) {
        set_err(err, errlen, "tokenizer: tokenizer.ggml.tokens missing or not an array of strings");
        return NULL;
    }
    if (!mv || mv->type != GGUF_TYPE_ARRAY || mv->arr.elem_type != GGUF_TYPE_STRING) {
        set_err(err, errlen, "tokenizer: tokenizer.ggml.merges missing or not an array of strings");
        return NULL;
    }
    uint64_t n = gguf_arr_len(tv), nm = gguf_arr_len(mv);
    if (n == 0 || n > 0x7FFFFFFF || nm > 0x7FFFFFFF) {
        set_err(err, errlen, "tokenizer: bad vocabulary size %llu", (unsigned long long)n);
        return NULL;
    }
    if (yv && gguf_arr_len(yv) != n) {
        set_err(err, errlen, "tokenizer: tokenizer.ggml.token_type has %llu entries, not one per token",
                (unsigned long long)gguf_arr_len(yv));
        return NULL;
    }
    const char **tok = malloc(n * sizeof *tok);
    uint32_t *tlen = malloc(n * sizeof *tlen);
    int32_t *types = yv ? malloc(n * sizeof *types) : NULL;
    const char **mer = malloc((nm ? nm : 1) * sizeof *mer);
    uint32_t *mlen = malloc((nm ? nm : 1) * sizeof *mlen);
    ds4_tokenizer *t = NULL;
    if (!tok || !tlen || (yv && !types) || !mer || !mlen) {
        set_err(err, errlen, "tokenizer: out of memory");
        goto done;
    }
    for (uint64_t i = 0; i < n; i++) {
        if (!gguf_arr_str(tv, i, &s) || s.len > 0xFFFFFFFFu) {
            set_err(err, errlen, "tokenizer: token %llu is not a string", (unsigned long long)i);
            goto done;
        }
        tok[i] = s.data;
        tlen[i] = (uint32_t)s.len;
        if (types) {
            int64_t v;
            if (!gguf_arr_i64(yv, i, &v)) {
                set_err(err, errlen, "tokenizer: token_type %llu is not an integer", (unsigned long long)i);
                goto done;
            }
            types[i] = (int32_t)v;
        }
    }
    for (uint64_t i = 0; i < nm; i++) {
        if (!gguf_arr_str(mv, i, &s) || s.len > 0xFFFFFFFFu) {
            set_err(err, errlen, "tokenizer: merge %llu is not a string", (unsigned long long)i);
            goto done;
        }
        mer[i] = s.data;
        mlen[i] = (uint32_t)s.len;
    }
    uint32_t bos = UINT32_MAX, eos = UINT32_MAX;
    gguf_get_u32(f, "tokenizer.ggml.bos_token_id", &bos);
    gguf_get_u32(f, "tokenizer.ggml.eos_token_id", &eos);
    t = ds4_tokenizer_new(tok, tlen, types, (uint32_t)n, mer, mlen, (uint32_t)nm,
                          bos < n ? (int32_t)bos : -1, eos < n ? (int32_t)eos : -1, err, errlen);
done:
    free(tok);
    free(tlen);
    free(types);
    free(mer);
    free(mlen);
    return t;
}

/* ------------------------------------------------------------------------ */
/* BPE on one piece */

typedef struct {
    const ds4_tokenizer *t;
    ds4_tokens *out;
    /* scratch for BPE, grown as needed */
    int32_t *sym;  /* symbol token id */
    int32_t *next; /* next live symbol, -1 = end */
    int32_t *prev;
    uint32_t *rank; /* rank of pair (i, next[i]), UINT32_MAX = none */
    uint64_t *heap; /* (rank << 32 | pos) */
    size_t cap;
    bool oom;
    /* ds4_pretokenize: report pieces instead of encoding them */
    void (*piece_cb)(void *ud, size_t start, size_t end);
    void *piece_ud;
    const unsigned char *base;
} bpe_ctx;

static bool bpe_reserve(bpe_ctx *c, size_t n) {
    if (n <= c->cap) return true;
    size_t nc = c->cap ? c->cap : 64;
    while (nc < n) nc *= 2;
    int32_t *a = realloc(c->sym, nc * sizeof *a);
    if (a) c->sym = a;
    int32_t *b = realloc(c->next, nc * sizeof *b);
    if (b) c->next = b;
    int32_t *d = realloc(c->prev, nc * sizeof *d);
    if (d) c->prev = d;
    uint32_t *r = realloc(c->rank, nc * sizeof *r);
    if (r) c->rank = r;
    uint64_t *h = realloc(c->heap, 2 * nc * sizeof *h);
    if (h) c->heap = h;
    if (!a || !b || !d || !r || !h) return false;
    c->cap = nc;
    return true;
}

static void bpe_free(bpe_ctx *c) {
    free(c->sym);
    free(c->next);
    free(c->prev);
    free(c->rank);
    free(c->heap);
}

static inline uint32_t pair_rank(const ds4_tokenizer *t, int32_t a, int32_t b) {
    uint32_t r = 0;
    int32_t o = -1;
    return merge_lookup(t, a, b, &r, &o) ? r : UINT32_MAX;
}

/* Merge symbol i with its right neighbour. */
static inline void bpe_merge_at(bpe_ctx *c, int32_t i) {
    uint32_t r = 0;
    int32_t o = -1;
    int32_t j = c->next[i];
    merge_lookup(c->t, c->sym[i], c->sym[j], &r, &o);
    c->sym[i] = o;
    c->next[i] = c->next[j];
    if (c->next[j] >= 0) c->prev[c->next[j]] = i;
    c->sym[j] = -1;
}

static void heap_push(uint64_t *h, size_t *n, uint64_t v) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p] <= v) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = v;
}

static uint64_t heap_pop(uint64_t *h, size_t *n) {
    uint64_t top = h[0], v = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, m = i;
        if (l < *n && h[l] < v) m = l;
        if (l + 1 < *n && h[l + 1] < (m == i ? v : h[l])) m = l + 1;
        if (m == i) break;
        h[i] = h[m];
        i = m;
    }
    if (*n) h[i] = v;
    return top;
}

static void bpe_piece(bpe_ctx *c, const unsigned char *p, size_t n) {
    const ds4_tokenizer *t = c->t;
    if (c->piece_cb) {
        c->piece_cb(c->piece_ud, (size_t)(p - c->base), (size_t)(p - c->base) + n);
        return;
    }
    if (n == 1) {
        if (!ds4_tokens_push(c->out, t->byte_token[p[0]])) c->oom = true;
        return;
    }
    if (!bpe_reserve(c, n)) {
        c->oom = true;
        return;
    }
    int32_t *sym = c->sym, *next = c->next, *prev = c->prev;
    for (size_t i = 0; i < n; i++) {
        sym[i] = t->byte_token[p[i]];
        next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
        prev[i] = (int32_t)i - 1;
    }
    if (n <= 96) {
        /* rank per adjacent pair; each step rescans the live symbols */
        uint32_t *rank = c->rank;
        for (size_t i = 0; i + 1 < n; i++) rank[i] = pair_rank(t, sym[i], sym[i + 1]);
        rank[n - 1] = UINT32_MAX;
        for (;;) {
            uint32_t best = UINT32_MAX;
            int32_t bi = -1;
            for (int32_t i = 0; i >= 0; i = next[i])
                if (rank[i] < best) {
                    best = rank[i];
                    bi = i;
                }
            if (bi < 0) break;
            bpe_merge_at(c, bi);
            int32_t nx = next[bi], pv = prev[bi];
            rank[bi] = nx >= 0 ? pair_rank(t, sym[bi], sym[nx]) : UINT32_MAX;
            if (pv >= 0) rank[pv] = pair_rank(t, sym[pv], sym[bi]);
        }
    } else {
        /* binary heap of (rank, position); stale entries are skipped */
        uint64_t *heap = c->heap;
        size_t hn = 0;
        for (size_t i = 0; i + 1 < n; i++) {
            uint32_t r = pair_rank(t, sym[i], sym[i + 1]);
            if (r != UINT32_MAX) heap_push(heap, &hn, ((uint64_t)r << 32) | i);
        }
        while (hn) {
            uint64_t e = heap_pop(heap, &hn);
            int32_t i = (int32_t)(e & 0xFFFFFFFFu);
            uint32_t r = (uint32_t)(e >> 32);
            if (sym[i] < 0 || next[i] < 0 || pair_rank(t, sym[i], sym[next[i]]) != r) continue;
            bpe_merge_at(c, i);
            int32_t nx = next[i], pv = prev[i];
            if (nx >= 0) {
                uint32_t r2 = pair_rank(t, sym[i], sym[nx]);
                if (r2 != UINT32_MAX) heap_push(heap, &hn, ((uint64_t)r2 << 32) | (uint32_t)i);
            }
            if (pv >= 0) {
                uint32_t r2 = pair_rank(t, sym[pv], sym[i]);
                if (r2 != UINT32_MAX) heap_push(heap, &hn, ((uint64_t)r2 << 32) | (uint32_t)pv);
            }
        }
    }
    for (int32_t i = 0; i >= 0; i = next[i])
        if (!ds4_tokens_push(c->out, sym[i])) {
            c->oom = true;
            return;
        }
}

/* ------------------------------------------------------------------------ */
/* pre-tokenizer */

enum {
    F_L = UCLASS_L,
    F_M = UCLASS_M,
    F_N = UCLASS_N,
    F_P = UCLASS_P,
    F_S = UCLASS_S,
    F_WS = UCLASS_WS,
    F_CJK = 64,
    F_CRLF = 128,   /* \r or \n */
    F_SPACE = 256,  /* U+0020 */
    F_APUNCT = 512, /* ASCII punctuation !../ :..@ [..` {..~ */
};

typedef struct {
    uint16_t fl;
    uint8_t len;
} uchar_info;

static uint16_t ascii_flags[128];
static pthread_once_t ascii_once = PTHREAD_ONCE_INIT;

static void fill_ascii_flags(void) {
    for (int c = 0; c < 128; c++) {
        uint16_t f = (uint16_t)unicode_class((uint32_t)c);
        if (c == '\r' || c == '\n') f |= F_CRLF;
        if (c == ' ') f |= F_SPACE;
        if ((c >= '!' && c <= '/') || (c >= ':' && c <= '@') || (c >= '[' && c <= '`') || (c >= '{' && c <= '~'))
            f |= F_APUNCT;
        ascii_flags[c] = f;
    }
}

static void init_ascii_flags(void) { pthread_once(&ascii_once, fill_ascii_flags); }

static inline bool is_cjk(uint32_t cp) {
    return (cp >= 0x4E00 && cp <= 0x9FA5) || (cp >= 0x3040 && cp <= 0x30FF);
}

static inline uchar_info char_at(const unsigned char *s, size_t n) {
    uchar_info u;
    if (s[0] < 0x80) {
        u.fl = ascii_flags[s[0]];
        u.len = 1;
        return u;
    }
    uint32_t cp;
    size_t l = utf8_decode(s, n, &cp);
    if (!l) { /* invalid byte: a symbol, like U+FFFD */
        u.fl = F_S;
        u.len = 1;
        return u;
    }
    u.fl = (uint16_t)unicode_class(cp);
    if (is_cjk(cp)) u.fl |= F_CJK;
    u.len = (uint8_t)l;
    return u;
}

static inline bool ascii_alpha(unsigned char c) { return (c | 32) >= 'a' && (c | 32) <= 'z'; }

/* End of the run of chars having any of `mask`, from i. */
static inline size_t run_of(const unsigned char *s, size_t i, size_t e, uint16_t mask) {
    while (i < e) {
        uchar_info u = char_at(s + i, e - i);
        if (!(u.fl & mask)) break;
        i += u.len;
    }
    return i;
}

/* Stage-3 regex: end of the match starting at i (with char c), or 0. */
static size_t stage3_match(const unsigned char *s, size_t i, size_t e, uchar_info c) {
    size_t j = i + c.len;
    /* [ASCII punct][A-Za-z]+ */
    if ((c.fl & F_APUNCT) && j < e && ascii_alpha(s[j])) {
        while (j < e && ascii_alpha(s[j])) j++;
        return j;
    }
    /* [^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+ */
    if (!(c.fl & (F_CRLF | F_L | F_P | F_S)) && j < e) {
        uchar_info d = char_at(s + j, e - j);
        if (d.fl & (F_L | F_M)) return run_of(s, j + d.len, e, F_L | F_M);
    }
    if (c.fl & (F_L | F_M)) return run_of(s, j, e, F_L | F_M);
    /*  ?[\p{P}\p{S}]+[\r\n]* */
    size_t k = (size_t)-1;
    if (c.fl & (F_P | F_S))
        k = i;
    else if ((c.fl & F_SPACE) && j < e && (char_at(s + j, e - j).fl & (F_P | F_S)))
        k = j;
    if (k != (size_t)-1) {
        k = run_of(s, k, e, F_P | F_S);
        while (k < e && (s[k] == '\r' || s[k] == '\n')) k++;
        return k;
    }
    /* \s*[\r\n]+ | \s+(?!\S) | \s+ */
    if (c.fl & F_WS) {
        size_t r = i, last_nl = (size_t)-1, last_start = i, nchars = 0;
        while (r < e) {
            uchar_info u = char_at(s + r, e - r);
            if (!(u.fl & F_WS)) break;
            if (u.fl & F_CRLF) last_nl = r;
            last_start = r;
            r += u.len;
            nchars++;
        }
        if (last_nl != (size_t)-1) return last_nl + 1;
        if (r == e || nchars < 2) return r;
        return last_start;
    }
    return 0;
}

static void stage3(bpe_ctx *c, const unsigned char *s, size_t a, size_t e) {
    size_t i = a, gap = a;
    while (i < e && !c->oom) {
        uchar_info u = char_at(s + i, e - i);
        size_t m = stage3_match(s, i, e, u);
        if (m) {
            if (gap < i) bpe_piece(c, s + gap, i - gap);
            bpe_piece(c, s + i, m - i);
            i = gap = m;
        } else {
            i += u.len;
        }
    }
    if (gap < e && !c->oom) bpe_piece(c, s + gap, e - gap);
}

/* Stages 1 and 2 (numbers, CJK runs) then stage 3 on what they leave. */
static void pretokenize(bpe_ctx *c, const unsigned char *s, size_t a, size_t e) {
    size_t i = a;
    while (i < e && !c->oom) {
        uchar_info u = char_at(s + i, e - i);
        if (u.fl & F_N) {
            size_t j = i + u.len;
            for (int k = 1; k < 3 && j < e; k++) {
                uchar_info v = char_at(s + j, e - j);
                if (!(v.fl & F_N)) break;
                j += v.len;
            }
            bpe_piece(c, s + i, j - i);
            i = j;
        } else if (u.fl & F_CJK) {
            size_t j = run_of(s, i + u.len, e, F_CJK);
            stage3(c, s, i, j);
            i = j;
        } else {
            size_t j = i + u.len;
            while (j < e) {
                uchar_info v = char_at(s + j, e - j);
                if (v.fl & (F_N | F_CJK)) break;
                j += v.len;
            }
            stage3(c, s, i, j);
            i = j;
        }
    }
}

/* ------------------------------------------------------------------------ */
/* added tokens + driver */

/* Longest added token starting at s[0..n), or 0. */
static size_t added_match(const ds4_tokenizer *t, const unsigned char *s, size_t n, int32_t *id) {
    uint32_t node = 0;
    size_t best = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t ch = t->trie[node].child;
        while (ch && t->trie[ch].byte != s[i]) ch = t->trie[ch].sibling;
        if (!ch) break;
        node = ch;
        if (t->trie[node].token >= 0) {
            best = i + 1;
            *id = t->trie[node].token;
        }
    }
    return best;
}

static bool tokenize_impl(const ds4_tokenizer *t, const char *text, size_t len, bool parse_special,
                          const ds4_span *plain, size_t n_plain, ds4_tokens *out) {
    init_ascii_flags();
    const unsigned char *s = (const unsigned char *)text;
    bpe_ctx c = {.t = t, .out = out};
    size_t seg = 0, i = 0, sp = 0;
    if (parse_special && t->has_added) {
        while (i < len && !c.oom) {
            if (!t->added_first[s[i]]) {
                i++;
                continue;
            }
            while (sp < n_plain && plain[sp].end <= i) sp++;
            size_t limit = len;
            if (sp < n_plain) {
                if (plain[sp].start <= i) { /* inside an untrusted span */
                    i = plain[sp].end;
                    continue;
                }
                limit = plain[sp].start;
            }
            int32_t id = -1;
            size_t m = added_match(t, s + i, limit - i, &id);
            if (!m) {
                i++;
                continue;
            }
            if (seg < i) pretokenize(&c, s, seg, i);
            if (!c.oom && !ds4_tokens_push(out, id)) c.oom = true;
            i += m;
            seg = i;
        }
    }
    if (seg < len && !c.oom) pretokenize(&c, s, seg, len);
    bpe_free(&c);
    return !c.oom;
}

void ds4_pretokenize(const char *text, size_t len, void (*cb)(void *ud, size_t start, size_t end), void *ud) {
    init_ascii_flags();
    bpe_ctx c = {.piece_cb = cb, .piece_ud = ud, .base = (const unsigned char *)text};
    pretokenize(&c, (const unsigned char *)text, 0, len);
}

bool ds4_tokenize(const ds4_tokenizer *t, const char *text, size_t len, bool parse_special, ds4_tokens *out) {
    return tokenize_impl(t, text, len, parse_special, NULL, 0, out);
}

bool ds4_tokenize_spans(const ds4_tokenizer *t, const char *text, size_t len, const ds4_span *plain,
                        size_t n_plain, ds4_tokens *out) {
    return tokenize_impl(t, text, len, true, plain, n_plain, out);
}

/* ------------------------------------------------------------------------ */
/* decoding */

bool ds4_detokenize(const ds4_tokenizer *t, const int32_t *ids, size_t n, char **buf, size_t *len, size_t *cap) {
    for (size_t i = 0; i < n; i++) {
        size_t l;
        const char *p = ds4_token_bytes(t, ids[i], &l);
        if (!p) continue;
        if (*len + l + 1 > *cap) {
            size_t nc = *cap ? *cap : 256;
            while (nc < *len + l + 1) nc *= 2;
            char *q = realloc(*buf, nc);
            if (!q) return false;
            *buf = q;
            *cap = nc;
        }
        memcpy(*buf + *len, p, l);
        *len += l;
        (*buf)[*len] = 0;
    }
    if (!*buf) {
        *buf = malloc(1);
        if (!*buf) return false;
        **buf = 0;
        *cap = 1;
    }
    return true;
}

void ds4_utf8_stream_init(ds4_utf8_stream *s, bool replace_invalid) {
    memset(s, 0, sizeof *s);
    s->replace_invalid = replace_invalid;
}

/* >0: complete well-formed sequence of that length; 0: s[0] starts no valid
 * sequence; -1: a valid prefix that needs more bytes. */
static int utf8_status(const unsigned char *s, size_t n) {
    uint32_t cp;
    size_t l = utf8_decode(s, n, &cp);
    if (l) return (int)l;
    unsigned c = s[0];
    size_t need = c >= 0xC2 && c < 0xE0 ? 2 : c >= 0xE0 && c < 0xF0 ? 3 : c >= 0xF0 && c < 0xF5 ? 4 : 0;
    if (!need || n >= need) return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        if (i == 1) {
            if (c == 0xE0 && s[1] < 0xA0) return 0;
            if (c == 0xED && s[1] >= 0xA0) return 0;
            if (c == 0xF0 && s[1] < 0x90) return 0;
            if (c == 0xF4 && s[1] >= 0x90) return 0;
        }
    }
    return -1;
}

static size_t emit_bad(const ds4_utf8_stream *s, unsigned char b, char *out) {
    if (!s->replace_invalid) {
        out[0] = (char)b;
        return 1;
    }
    memcpy(out, "\xef\xbf\xbd", 3);
    return 3;
}

size_t ds4_utf8_stream_feed(ds4_utf8_stream *s, const char *in, size_t n, char *out) {
    const unsigned char *u = (const unsigned char *)in;
    size_t o = 0, i = 0;
    /* first resolve the held-back bytes, borrowing from the input */
    while (s->npend) {
        unsigned char tmp[8];
        size_t k = s->npend, take = n - i < 4 ? n - i : 4;
        memcpy(tmp, s->pend, k);
        memcpy(tmp + k, u + i, take);
        int st = utf8_status(tmp, k + take);
        if (st < 0) { /* still incomplete: everything left is held */
            memcpy(s->pend + k, u + i, take);
            s->npend += take;
            return o;
        }
        if (st == 0) {
            o += emit_bad(s, tmp[0], out + o);
            memmove(s->pend, s->pend + 1, k - 1);
            s->npend = k - 1;
            continue;
        }
        memcpy(out + o, tmp, (size_t)st);
        o += (size_t)st;
        i += (size_t)st - k; /* st > k: the sequence used input bytes */
        s->npend = 0;
    }
    while (i < n) {
        if (u[i] < 0x80) {
            out[o++] = (char)u[i++];
            continue;
        }
        int st = utf8_status(u + i, n - i);
        if (st > 0) {
            memcpy(out + o, u + i, (size_t)st);
            o += (size_t)st;
            i += (size_t)st;
        } else if (st == 0) {
            o += emit_bad(s, u[i], out + o);
            i++;
        } else {
            memcpy(s->pend, u + i, n - i);
            s->npend = n - i;
            break;
        }
    }
    return o;
}

size_t ds4_utf8_stream_flush(ds4_utf8_stream *s, char *out) {
    size_t o = 0;
    for (size_t i = 0; i < s->npend; i++) o += emit_bad(s, s->pend[i], out + o);
    s->npend = 0;
    return o;
}
