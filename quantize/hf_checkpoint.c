/* hf_checkpoint.c - official DeepSeek V4 checkpoint directory reader (see
 * hf_checkpoint.h for the formats handled). */
#include "hf_checkpoint.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fp16.h"

static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static char *path_join(const char *a, const char *b) {
    size_t n = strlen(a) + strlen(b) + 2;
    char *p = malloc(n);
    snprintf(p, n, "%s/%s", a, b);
    return p;
}

static char *read_text(const char *path, size_t *len_out) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return NULL;
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    if (n < 0 || n > (1L << 30)) { fclose(fp); return NULL; }
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, fp) != (size_t)n) { free(buf); buf = NULL; }
    fclose(fp);
    if (buf) buf[n] = 0;
    if (len_out) *len_out = (size_t)n;
    return buf;
}

static bool file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

bool hf_checkpoint_open(hf_checkpoint *ck, const char *dir, char *err, size_t errlen) {
    memset(ck, 0, sizeof *ck);
    ck->dir = strdup(dir);
    char *cfg = path_join(dir, "config.json");
    if (!file_exists(cfg)) {
        set_err(err, errlen, "%s: no config.json (is this a Hugging Face checkpoint directory?)", dir);
        free(cfg);
        hf_checkpoint_close(ck);
        return false;
    }
    free(cfg);
    char **files = NULL;
    size_t n_files = 0;
    char *index_path = path_join(dir, "model.safetensors.index.json");
    if (file_exists(index_path)) {
        char *text = read_text(index_path, NULL);
        cJSON *root = text ? cJSON_Parse(text) : NULL;
        free(text);
        cJSON *map = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
        if (!cJSON_IsObject(map)) {
            set_err(err, errlen, "%s: not valid JSON with a \"weight_map\" object", index_path);
            cJSON_Delete(root);
            free(index_path);
            hf_checkpoint_close(ck);
            return false;
        }
        size_t cap = (size_t)cJSON_GetArraySize(map);
        files = calloc(cap ? cap : 1, sizeof *files);
        for (cJSON *it = map->child; it; it = it->next) {
            if (!cJSON_IsString(it) || strchr(it->valuestring, '/') || strstr(it->valuestring, "..")) {
                set_err(err, errlen, "%s: bad shard name for tensor '%s'", index_path, it->string);
                for (size_t i = 0; i < n_files; i++) free(files[i]);
                free(files);
                cJSON_Delete(root);
                free(index_path);
                hf_checkpoint_close(ck);
                return false;
            }
            files[n_files++] = strdup(it->valuestring);
        }
        cJSON_Delete(root);
        qsort(files, n_files, sizeof *files, cmp_str);
        size_t u = 0;
        for (size_t i = 0; i < n_files; i++) {
            if (u > 0 && strcmp(files[u - 1], files[i]) == 0) { free(files[i]); continue; }
            files[u++] = files[i];
        }
        n_files = u;
    } else {
        char *single = path_join(dir, "model.safetensors");
        if (!file_exists(single)) {
            set_err(err, errlen, "%s: neither model.safetensors.index.json nor model.safetensors found", dir);
            free(single);
            free(index_path);
            hf_checkpoint_close(ck);
            return false;
        }
        free(single);
        files = calloc(1, sizeof *files);
        files[n_files++] = strdup("model.safetensors");
    }
    free(index_path);
    ck->shards = calloc(n_files ? n_files : 1, sizeof(st_file));
    bool ok = true;
    for (size_t i = 0; i < n_files; i++) {
        char *p = path_join(dir, files[i]);
        if (ok && !st_open(&ck->shards[ck->n_shards], p, err, errlen)) ok = false;
        else if (ok) ck->n_shards++;
        free(p);
        free(files[i]);
    }
    free(files);
    if (!ok) {
        hf_checkpoint_close(ck);
        return false;
    }
    char *tok = path_join(dir, "tokenizer.json");
    if (file_exists(tok)) ck->tokenizer_path = tok;
    else free(tok);
    return true;
}

void hf_checkpoint_close(hf_checkpoint *ck) {
    for (size_t i = 0; i < ck->n_shards; i++) st_close(&ck->shards[i]);
    free(ck->shards);
    free(ck->dir);
    free(ck->tokenizer_path);
    memset(ck, 0, sizeof *ck);
}

const st_tensor *hf_checkpoint_find(const hf_checkpoint *ck, const char *name) {
    for (size_t i = 0; i < ck->n_shards; i++) {
        const st_tensor *t = st_find(&ck->shards[i], name);
        if (t) return t;
    }
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* config.json */

static bool json_num(const cJSON *root, const char *key, double *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (cJSON_IsNumber(v)) { *out = v->valuedouble; return true; }
    if (cJSON_IsBool(v)) { *out = cJSON_IsTrue(v) ? 1 : 0; return true; }
    return false;
}

bool hf_checkpoint_hparams(const hf_checkpoint *ck, ds4_hparams *hp, char *err, size_t errlen) {
    memset(hp, 0, sizeof *hp);
    char *path = path_join(ck->dir, "config.json");
    char *text = read_text(path, NULL);
    cJSON *root = text ? cJSON_Parse(text) : NULL;
    free(text);
    if (!cJSON_IsObject(root)) {
        set_err(err, errlen, "%s: not valid JSON (expected an object)", path);
        cJSON_Delete(root);
        free(path);
        return false;
    }
    /* Flash checkpoints may nest the text model config */
    cJSON *tc = cJSON_GetObjectItemCaseSensitive(root, "text_config");
    const cJSON *c = cJSON_IsObject(tc) ? tc : root;
    bool ok = false;
    double v;
#define REQ_U32(key, field)                                                        \
    do {                                                                           \
        if (!json_num(c, key, &v) || v < 0 || v > 4294967295.0 || v != floor(v)) { \
            set_err(err, errlen, "%s: missing or invalid \"%s\"", path, key);      \
            goto done;                                                             \
        }                                                                          \
        hp->field = (uint32_t)v;                                                   \
    } while (0)
#define OPT_U32(key, field, def) hp->field = json_num(c, key, &v) ? (uint32_t)v : (def)
#define OPT_F64(key, field, def) hp->field = json_num(c, key, &v) ? v : (def)
    REQ_U32("num_hidden_layers", n_layer);
    REQ_U32("hidden_size", n_embd);
    REQ_U32("vocab_size", n_vocab);
    REQ_U32("num_attention_heads", n_head);
    OPT_U32("num_key_value_heads", n_head_kv, 1);
    REQ_U32("head_dim", head_dim);
    hp->value_dim = hp->head_dim;
    OPT_U32("qk_rope_head_dim", n_rot, 64);
    REQ_U32("q_lora_rank", q_lora_rank);
    REQ_U32("o_lora_rank", o_lora_rank);
    REQ_U32("o_groups", n_out_group);
    REQ_U32("n_routed_experts", n_expert);
    REQ_U32("num_experts_per_tok", n_expert_used);
    REQ_U32("moe_intermediate_size", n_ff_exp);
    OPT_U32("n_shared_experts", n_expert_shared, 1);
    OPT_U32("num_hash_layers", n_hash_layer, 0);
    REQ_U32("sliding_window", n_swa);
    OPT_U32("index_n_heads", n_indexer_head, 64);
    OPT_U32("index_head_dim", indexer_head_dim, 128);
    OPT_U32("index_topk", indexer_top_k, 512);
    OPT_U32("hc_mult", n_hc, 4);
    OPT_U32("hc_sinkhorn_iters", hc_sinkhorn_iter, 20);
    OPT_F64("rope_theta", rope_freq_base, 10000);
    OPT_F64("compress_rope_theta", compress_rope_freq_base, 160000);
    OPT_F64("routed_scaling_factor", expert_weights_scale, 1.0);
    OPT_F64("rms_norm_eps", rms_eps, 1e-6);
    OPT_F64("hc_eps", hc_eps, 1e-6);
    double norm = 1;
    json_num(c, "norm_topk_prob", &norm);
    hp->expert_weights_norm = norm != 0;
    double clamp = 10;
    json_num(c, "swiglu_limit", &clamp);
    double maxpos = 0;
    if (json_num(c, "max_position_embeddings", &maxpos) && maxpos > 0) hp->context_length = (uint64_t)maxpos;
    if (hp->n_layer == 0 || hp->n_layer > DS4_MAX_LAYERS) {
        set_err(err, errlen, "%s: num_hidden_layers %u out of range [1, %d]", path, hp->n_layer, DS4_MAX_LAYERS);
        goto done;
    }
    for (uint32_t il = 0; il < hp->n_layer; il++) hp->swiglu_clamp[il] = (float)clamp;
    const cJSON *sf = cJSON_GetObjectItemCaseSensitive(c, "scoring_func");
    if (cJSON_IsString(sf) && strcmp(sf->valuestring, "sqrtsoftplus") != 0) {
        set_err(err, errlen, "%s: scoring_func \"%s\" is not supported (DeepSeek V4 uses sqrtsoftplus)", path,
                sf->valuestring);
        goto done;
    }
    /* compress_ratios: one per layer; the official file carries one more for MTP */
    const cJSON *cr = cJSON_GetObjectItemCaseSensitive(c, "compress_ratios");
    if (!cJSON_IsArray(cr) || (uint32_t)cJSON_GetArraySize(cr) < hp->n_layer) {
        set_err(err, errlen, "%s: \"compress_ratios\" must list one ratio per layer (%u)", path, hp->n_layer);
        goto done;
    }
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        const cJSON *e = cJSON_GetArrayItem(cr, (int)il);
        if (!cJSON_IsNumber(e) || e->valuedouble < 0) {
            set_err(err, errlen, "%s: compress_ratios[%u] is not a valid ratio", path, il);
            goto done;
        }
        hp->compress_ratio[il] = (uint32_t)e->valuedouble;
    }
    /* YaRN on the compressed layers; without rope_scaling there is none */
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(c, "rope_scaling");
    hp->rope_scale_factor = 1;
    hp->yarn_beta_fast = 32;
    hp->yarn_beta_slow = 1;
    hp->rope_orig_ctx = hp->context_length ? hp->context_length : 65536;
    if (cJSON_IsObject(rs)) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(rs, "type");
        if (!cJSON_IsString(type)) type = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
        if (cJSON_IsString(type) && strcmp(type->valuestring, "yarn") != 0) {
            set_err(err, errlen, "%s: rope_scaling type \"%s\" is not supported (expected yarn)", path, type->valuestring);
            goto done;
        }
        json_num(rs, "factor", &hp->rope_scale_factor);
        json_num(rs, "beta_fast", &hp->yarn_beta_fast);
        json_num(rs, "beta_slow", &hp->yarn_beta_slow);
        double o;
        if (json_num(rs, "original_max_position_embeddings", &o) && o > 0) hp->rope_orig_ctx = (uint64_t)o;
    }
    char verr[256];
    if (!ds4_hparams_validate(hp, verr, sizeof verr)) {
        set_err(err, errlen, "%s: %s", path, verr);
        goto done;
    }
    ok = true;
done:
#undef REQ_U32
#undef OPT_U32
#undef OPT_F64
    cJSON_Delete(root);
    free(path);
    return ok;
}

/* ------------------------------------------------------------------------ */
/* element decoders */

float hf_e4m3_to_f32(uint8_t x) {
    /* E4M3FN: sign, 4-bit exponent (bias 7), 3-bit mantissa; 0x7f/0xff is NaN
     * in the format and is read as 0 (it never occurs in real weights). */
    uint8_t mag = x & 0x7f;
    float v;
    if (mag == 0x7f) v = 0.0f;
    else {
        int e = mag >> 3, m = mag & 7;
        v = e == 0 ? ldexpf((float)m, -9) : ldexpf(1.0f + (float)m / 8.0f, e - 7);
    }
    return (x & 0x80) ? -v : v;
}

float hf_e8m0_to_f32(uint8_t x) {
    if (x == 0) return ds4_bits_f32(0x00400000u); /* 2^-127 */
    if (x == 0xff) return NAN;
    return ds4_bits_f32((uint32_t)x << 23);
}

float hf_e2m1_to_f32(uint8_t nibble) {
    static const float mag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
    float v = mag[nibble & 7];
    return (nibble & 8) ? -v : v;
}

/* ------------------------------------------------------------------------ */
/* tensors */

static char *scale_name_for(const char *name, const char *suffix) {
    size_t n = strlen(name);
    const char *w = ".weight";
    size_t base = (n > 7 && strcmp(name + n - 7, w) == 0) ? n - 7 : n;
    size_t len = base + strlen(suffix) + 1;
    char *s = malloc(len);
    snprintf(s, len, "%.*s%s", (int)base, name, suffix);
    return s;
}

bool hf_tensor_get(const hf_checkpoint *ck, const char *name, uint64_t rows, uint64_t cols, hf_tensor *out, char *err,
                   size_t errlen) {
    memset(out, 0, sizeof *out);
    const st_tensor *w = hf_checkpoint_find(ck, name);
    if (!w) {
        set_err(err, errlen, "checkpoint has no tensor '%s'", name);
        return false;
    }
    out->w = w;
    out->rows = rows;
    out->cols = cols;
    char *sn = scale_name_for(name, ".scale");
    const st_tensor *s = hf_checkpoint_find(ck, sn);
    if (!s) {
        free(sn);
        sn = scale_name_for(name, ".weight_scale_inv");
        s = hf_checkpoint_find(ck, sn);
    }
    uint64_t logical_cols = w->n_dims ? w->shape[w->n_dims - 1] : 1;
    uint64_t logical_rows = w->n_dims >= 2 ? w->n_elems / (logical_cols ? logical_cols : 1) : 1;
    if (w->dtype == ST_F8_E4M3) {
        if (!s || s->dtype != ST_F8_E8M0 || s->n_dims != 2 || w->n_dims != 2) {
            set_err(err, errlen, "tensor '%s' is F8_E4M3 but has no 2-D F8_E8M0 scale tensor '%s'", name, sn);
            free(sn);
            return false;
        }
        uint64_t br = (logical_rows + 127) / 128, bc = (logical_cols + 127) / 128;
        if (s->shape[0] != br || s->shape[1] != bc) {
            set_err(err, errlen, "scale '%s' has shape [%llu, %llu], expected [%llu, %llu] for 128x128 blocks of '%s'", sn,
                    (unsigned long long)s->shape[0], (unsigned long long)s->shape[1], (unsigned long long)br,
                    (unsigned long long)bc, name);
            free(sn);
            return false;
        }
        out->enc = HF_ENC_FP8_BLOCK;
        out->scale = s;
    } else if (w->dtype == ST_I8 && s) {
        logical_cols *= 2; /* two FP4 values per byte */
        if (s->dtype != ST_F8_E8M0 || s->n_dims != 2 || logical_cols % 32 || s->shape[0] != logical_rows ||
            s->shape[1] != logical_cols / 32) {
            set_err(err, errlen, "FP4 tensor '%s': scale '%s' must be F8_E8M0 [%llu, %llu]", name, sn,
                    (unsigned long long)logical_rows, (unsigned long long)(logical_cols / 32));
            free(sn);
            return false;
        }
        out->enc = HF_ENC_FP4;
        out->scale = s;
    } else if (w->dtype == ST_F32 || w->dtype == ST_F16 || w->dtype == ST_BF16) {
        out->enc = HF_ENC_PLAIN;
    } else {
        set_err(err, errlen, "tensor '%s' has dtype %s, which cannot be converted here", name, w->dtype_name);
        free(sn);
        return false;
    }
    free(sn);
    if (logical_rows != rows || logical_cols != cols) {
        set_err(err, errlen, "tensor '%s' has shape [%llu, %llu], expected [%llu, %llu]", name,
                (unsigned long long)logical_rows, (unsigned long long)logical_cols, (unsigned long long)rows,
                (unsigned long long)cols);
        return false;
    }
    return true;
}

void hf_tensor_read_rows(const hf_tensor *t, uint64_t row0, uint64_t n_rows, float *dst) {
    const uint64_t cols = t->cols;
    const uint8_t *d = t->w->data;
    for (uint64_t r = 0; r < n_rows; r++) {
        const uint64_t row = row0 + r;
        float *o = dst + r * cols;
        switch (t->enc) {
        case HF_ENC_PLAIN:
            if (t->w->dtype == ST_F32) memcpy(o, d + row * cols * 4, cols * 4);
            else if (t->w->dtype == ST_BF16)
                for (uint64_t c = 0; c < cols; c++) {
                    const uint8_t *p = d + (row * cols + c) * 2;
                    o[c] = ds4_bf16_to_fp32((uint16_t)(p[0] | p[1] << 8));
                }
            else
                for (uint64_t c = 0; c < cols; c++) {
                    const uint8_t *p = d + (row * cols + c) * 2;
                    o[c] = ds4_fp16_to_fp32((uint16_t)(p[0] | p[1] << 8));
                }
            break;
        case HF_ENC_FP8_BLOCK: {
            const uint64_t bc = t->scale->shape[1];
            const uint8_t *srow = t->scale->data + (row / 128) * bc;
            for (uint64_t c = 0; c < cols; c++) o[c] = hf_e4m3_to_f32(d[row * cols + c]) * hf_e8m0_to_f32(srow[c / 128]);
            break;
        }
        case HF_ENC_FP4: {
            const uint8_t *prow = d + row * (cols / 2);
            const uint8_t *srow = t->scale->data + row * (cols / 32);
            for (uint64_t c = 0; c < cols; c += 2) {
                float s = hf_e8m0_to_f32(srow[c / 32]);
                uint8_t b = prow[c / 2];
                o[c] = hf_e2m1_to_f32(b & 15) * s;
                o[c + 1] = hf_e2m1_to_f32(b >> 4) * s;
            }
            break;
        }
        }
    }
}
