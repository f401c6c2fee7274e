/* hf_tokenizer.c - tokenizer.json -> tokenizer.ggml.* (see hf_tokenizer.h).
 *
 * The token table is indexed by id: model.vocab gives the BPE tokens,
 * added_tokens override/extend it (DeepSeek V4: 128,000 BPE entries, 1,283
 * added, ids 0..129,279 with no gaps). Token types follow llama.cpp's
 * converter so the file matches the published DS4 GGUFs. */
#include "hf_tokenizer.h"

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The DeepSeek V3/V4 pre-tokenizer (tokenizer.json "pre_tokenizer"), split
 * patterns in order. Anything else would need other split rules. */
static const char *const DS_SPLIT_PATTERNS[3] = {
    "\\p{N}{1,3}",
    "[\xe4\xb8\x80-\xe9\xbe\xa5\xe3\x81\x80-\xe3\x82\x9f\xe3\x82\xa0-\xe3\x83\xbf]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| "
    "?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
};

static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (cap - n < 65536) {
            size_t nc = cap ? cap * 2 : 1 << 20;
            char *p = realloc(buf, nc + 1);
            if (!p) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = p;
            cap = nc;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
    }
    fclose(f);
    buf[n] = 0;
    *len = n;
    return buf;
}

static bool check_pre_tokenizer(const cJSON *root, char *err, size_t errlen) {
    const cJSON *norm = cJSON_GetObjectItemCaseSensitive(root, "normalizer");
    if (norm && !cJSON_IsNull(norm)) {
        const cJSON *ty = cJSON_GetObjectItemCaseSensitive(norm, "type");
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(norm, "normalizers");
        if (!cJSON_IsString(ty) || strcmp(ty->valuestring, "Sequence") != 0 || cJSON_GetArraySize(list) != 0) {
            set_err(err, errlen, "tokenizer.json: a normalizer is set; only the DeepSeek V3/V4 tokenizer is supported");
            return false;
        }
    }
    const cJSON *pre = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(pre, "pretokenizers");
    int n = cJSON_GetArraySize(list), k = 0;
    bool byte_level = false;
    for (int i = 0; i < n; i++) {
        const cJSON *p = cJSON_GetArrayItem(list, i);
        const char *ty = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(p, "type"));
        if (ty && strcmp(ty, "Split") == 0) {
            const cJSON *pat = cJSON_GetObjectItemCaseSensitive(p, "pattern");
            const char *re = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(pat, "Regex"));
            const char *beh = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(p, "behavior"));
            if (k >= 3 || !re || strcmp(re, DS_SPLIT_PATTERNS[k]) != 0 || !beh || strcmp(beh, "Isolated") != 0 ||
                cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(p, "invert")))
                break;
            k++;
        } else if (ty && strcmp(ty, "ByteLevel") == 0 && i == n - 1 && k == 3) {
            byte_level = !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(p, "use_regex")) &&
                         !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(p, "add_prefix_space"));
        }
    }
    if (k != 3 || !byte_level) {
        set_err(err, errlen,
                "tokenizer.json: the pre-tokenizer is not the DeepSeek V3/V4 one (three Split stages + "
                "ByteLevel); its split rules are not implemented");
        return false;
    }
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const char *mt = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(model, "type"));
    if (!mt || strcmp(mt, "BPE") != 0 || cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "byte_fallback")) ||
        cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "ignore_merges"))) {
        set_err(err, errlen, "tokenizer.json: model is not a plain byte-level BPE");
        return false;
    }
    return true;
}

/* llama.cpp's heuristic for added tokens that are special in all but name. */
static bool looks_special(const char *s) {
    size_t n = strlen(s);
    if (!strcmp(s, "<pad>") || !strcmp(s, "<mask>") || !strcmp(s, "<2mass>") || !strcmp(s, "[@BOS@]")) return true;
    if (n >= 4 && !strncmp(s, "<|", 2) && !strcmp(s + n - 2, "|>")) return true;
    if (n >= 8 && !strncmp(s, "<\xef\xbd\x9c", 4) && !strcmp(s + n - 4, "\xef\xbd\x9c>")) return true;
    if (n >= 8 && !strncmp(s, "<unused", 7) && s[n - 1] == '>') return true;
    return false;
}

static bool is_pad_token(const char *s) {
    return !strcmp(s, "<\xef\xbd\x9c\xe2\x96\x81pad\xe2\x96\x81\xef\xbd\x9c>") || !strcmp(s, "<|pad|>") ||
           !strcmp(s, "<pad>") || !strcmp(s, "[PAD]");
}

static char *dup_str(const char *s) {
    size_t n = strlen(s);
    char *p = malloc(n + 1);
    if (p) memcpy(p, s, n + 1);
    return p;
}

void hf_tokenizer_vocab_free(hf_tokenizer_vocab *v) {
    if (v->tokens)
        for (uint32_t i = 0; i < v->n_tokens; i++) free(v->tokens[i]);
    if (v->merges)
        for (uint32_t i = 0; i < v->n_merges; i++) free(v->merges[i]);
    free(v->tokens);
    free(v->token_lens);
    free(v->types);
    free(v->merges);
    free(v->merge_lens);
    free(v->chat_template);
    memset(v, 0, sizeof *v);
}

/* Content of a tokenizer_config.json special token entry: a string or
 * {"content": ...}. */
static const char *config_token(const cJSON *cfg, const char *key) {
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (cJSON_IsString(e)) return e->valuestring;
    return cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "content"));
}

static int32_t id_of(const hf_tokenizer_vocab *v, const char *s) {
    if (!s) return -1;
    for (uint32_t i = 0; i < v->n_tokens; i++)
        if (v->types[i] != 5 && !strcmp(v->tokens[i], s)) return (int32_t)i;
    return -1;
}

static void read_config(const char *tokenizer_json_path, hf_tokenizer_vocab *v) {
    const char *slash = strrchr(tokenizer_json_path, '/');
    size_t dl = slash ? (size_t)(slash - tokenizer_json_path + 1) : 0;
    char *path = malloc(dl + 32);
    if (!path) return;
    memcpy(path, tokenizer_json_path, dl);
    strcpy(path + dl, "tokenizer_config.json");
    size_t len;
    char *text = read_file(path, &len);
    free(path);
    if (!text) return;
    cJSON *cfg = cJSON_ParseWithLength(text, len);
    free(text);
    if (!cfg) return;
    int32_t id;
    if ((id = id_of(v, config_token(cfg, "bos_token"))) >= 0) v->bos = id;
    if ((id = id_of(v, config_token(cfg, "eos_token"))) >= 0) v->eos = id;
    if (v->pad < 0 && (id = id_of(v, config_token(cfg, "pad_token"))) >= 0) v->pad = id;
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(cfg, "add_bos_token");
    if (cJSON_IsBool(b)) v->add_bos = cJSON_IsTrue(b);
    b = cJSON_GetObjectItemCaseSensitive(cfg, "add_eos_token");
    if (cJSON_IsBool(b)) v->add_eos = cJSON_IsTrue(b);
    const char *tpl = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(cfg, "chat_template"));
    if (tpl) v->chat_template = dup_str(tpl);
    cJSON_Delete(cfg);
}

bool hf_tokenizer_load(const char *path, hf_tokenizer_vocab *v, char *err, size_t errlen) {
    memset(v, 0, sizeof *v);
    v->bos = v->eos = v->pad = -1;
    v->add_bos = v->add_eos = -1;
    size_t len;
    char *text = read_file(path, &len);
    if (!text) {
        set_err(err, errlen, "%s: cannot read", path);
        return false;
    }
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!root) {
        set_err(err, errlen, "%s: not valid JSON", path);
        return false;
    }
    bool ok = false;
    if (!check_pre_tokenizer(root, err, errlen)) goto done;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    if (!cJSON_IsObject(vocab) || !cJSON_IsArray(merges)) {
        set_err(err, errlen, "%s: model.vocab / model.merges missing", path);
        goto done;
    }
    /* size = highest id + 1 */
    double max_id = -1;
    const cJSON *e;
    cJSON_ArrayForEach(e, vocab) {
        if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble > 0x7FFFFFF0) {
            set_err(err, errlen, "%s: vocab entry '%s' has a bad id", path, e->string ? e->string : "?");
            goto done;
        }
        if (e->valuedouble > max_id) max_id = e->valuedouble;
    }
    cJSON_ArrayForEach(e, added) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
        if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble > 0x7FFFFFF0 ||
            !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(e, "content"))) {
            set_err(err, errlen, "%s: malformed added_tokens entry", path);
            goto done;
        }
        if (id->valuedouble > max_id) max_id = id->valuedouble;
    }
    if (max_id < 0) {
        set_err(err, errlen, "%s: empty vocabulary", path);
        goto done;
    }
    uint32_t n = (uint32_t)max_id + 1;
    v->n_tokens = n;
    v->tokens = calloc(n, sizeof *v->tokens);
    v->token_lens = calloc(n, sizeof *v->token_lens);
    v->types = calloc(n, sizeof *v->types);
    if (!v->tokens || !v->token_lens || !v->types) goto oom;
    cJSON_ArrayForEach(e, vocab) {
        uint32_t id = (uint32_t)e->valuedouble;
        free(v->tokens[id]);
        if (!(v->tokens[id] = dup_str(e->string))) goto oom;
        v->types[id] = 1;
    }
    cJSON_ArrayForEach(e, added) {
        uint32_t id = (uint32_t)cJSON_GetObjectItemCaseSensitive(e, "id")->valuedouble;
        const char *content = cJSON_GetObjectItemCaseSensitive(e, "content")->valuestring;
        free(v->tokens[id]);
        if (!(v->tokens[id] = dup_str(content))) goto oom;
        bool special = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "special"));
        v->types[id] = special || looks_special(content) ? 3 : 4;
        if (v->pad < 0 && is_pad_token(content)) v->pad = (int32_t)id;
    }
    for (uint32_t i = 0; i < n; i++) {
        if (!v->tokens[i]) {
            char name[32];
            snprintf(name, sizeof name, "[PAD%u]", i);
            if (!(v->tokens[i] = dup_str(name))) goto oom;
            v->types[i] = 5;
        }
        v->token_lens[i] = (uint32_t)strlen(v->tokens[i]);
    }
    int nm = cJSON_GetArraySize(merges);
    v->n_merges = (uint32_t)nm;
    v->merges = calloc(nm ? (size_t)nm : 1, sizeof *v->merges);
    v->merge_lens = calloc(nm ? (size_t)nm : 1, sizeof *v->merge_lens);
    if (!v->merges || !v->merge_lens) goto oom;
    int r = 0;
    cJSON_ArrayForEach(e, merges) {
        if (cJSON_IsString(e)) {
            v->merges[r] = dup_str(e->valuestring);
        } else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 && cJSON_IsString(cJSON_GetArrayItem(e, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(e, 1))) {
            const char *a = cJSON_GetArrayItem(e, 0)->valuestring, *b = cJSON_GetArrayItem(e, 1)->valuestring;
            size_t la = strlen(a), lb = strlen(b);
            char *m = malloc(la + lb + 2);
            if (m) {
                memcpy(m, a, la);
                m[la] = ' ';
                memcpy(m + la + 1, b, lb + 1);
            }
            v->merges[r] = m;
        } else {
            set_err(err, errlen, "%s: merge %d is neither \"a b\" nor [\"a\", \"b\"]", path, r);
            goto done;
        }
        if (!v->merges[r]) goto oom;
        v->merge_lens[r] = (uint32_t)strlen(v->merges[r]);
        r++;
    }
    read_config(path, v);
    if (v->bos < 0) v->bos = id_of(v, "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>");
    if (v->eos < 0) v->eos = id_of(v, "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>");
    ok = true;
    goto done;
oom:
    set_err(err, errlen, "%s: out of memory", path);
done:
    cJSON_Delete(root);
    if (!ok) hf_tokenizer_vocab_free(v);
    return ok;
}

void hf_tokenizer_write(const hf_tokenizer_vocab *v, gguf_writer *w) {
    gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2");
    gguf_writer_set_str(w, "tokenizer.ggml.pre", "joyai-llm");
    gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)v->tokens, v->n_tokens);
    gguf_writer_set_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, v->types, v->n_tokens);
    gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", (const char *const *)v->merges, v->n_merges);
    if (v->bos >= 0) gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)v->bos);
    if (v->eos >= 0) gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)v->eos);
    if (v->pad >= 0) gguf_writer_set_u32(w, "tokenizer.ggml.padding_token_id", (uint32_t)v->pad);
    if (v->add_bos >= 0) gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", v->add_bos != 0);
    if (v->add_eos >= 0) gguf_writer_set_bool(w, "tokenizer.ggml.add_eos_token", v->add_eos != 0);
    if (v->chat_template) gguf_writer_set_str(w, "tokenizer.chat_template", v->chat_template);
}

bool hf_tokenizer_to_gguf(const char *tokenizer_json_path, gguf_writer *w, char *err, size_t errlen) {
    hf_tokenizer_vocab v;
    if (!hf_tokenizer_load(tokenizer_json_path, &v, err, errlen)) return false;
    hf_tokenizer_write(&v, w);
    hf_tokenizer_vocab_free(&v);
    const char *werr = gguf_writer_error(w);
    if (werr) {
        set_err(err, errlen, "%s", werr);
        return false;
    }
    return true;
}
