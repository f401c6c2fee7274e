/* cuda_backend.cu - the CUDA backend: weights on the device, the session's
 * KV state and scratch on the device, and the forward pass as a sequence of
 * kernel launches that mirrors forward.c step by step.
 *
 *   model_init     uploads every tensor once from the mmapped GGUF (Q8_0 and
 *                  IQ2_XXS repacked into the split layout, cuda_internal.cuh),
 *                  or, for synthetic models (ds4-bench), fills random weights
 *                  of the right types directly in device memory
 *   session_init   sizes KV state + scratch for n_ctx up front and fails with
 *                  the budget when the card cannot hold them
 *   forward        T tokens at positions n_tokens..: prefill launches the
 *                  kernels directly; a decode step (T = 1) replays a CUDA
 *                  graph captured on first use, since no kernel argument
 *                  depends on the position (kernels read it from pos0 on the
 *                  device)
 *   state_to_host / state_from_host   the engine.h host state around session
 *                  save/load, so session files are the CPU's
 *
 * The two halves of a layer are in cuda_layers.cu, the state types they
 * share in cuda_backend.cuh. Set DS4_CUDA_SYNC=1 to synchronise and check
 * after every kernel (names the failing step), DS4_CUDA_GRAPH=0 to launch
 * decode steps without a graph.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <string>
#include <vector>

#include "cuda_backend.cuh"
#include "ds4_cuda.h"

extern "C" {
#include "fp16.h"
}

/* ------------------------------------------------------------------------ */
/* model */

/* cu_layer, cu_model: cuda_backend.cuh */

/* Programmatic dependent launch (cuda_internal.cuh): on for cc >= 9.0 unless
 * DS4_CUDA_PDL=0; switched off for good if a graph with it fails to build. */
static int g_pdl = -1;
bool cu_pdl_enabled(void) {
    if (g_pdl < 0) {
        const char *e = getenv("DS4_CUDA_PDL");
        int dev = 0, major = 0;
        cudaGetDevice(&dev);
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
        g_pdl = major >= 9 && !(e && *e == '0');
    }
    return g_pdl == 1;
}

/* DS4_CUDA_CARVEOUT: N (every kernel), dN (kernels first launched in a
 * decode step; the default is d50), or "off". With dN the kernels decode
 * set keep the setting only while decode runs: a prefill chunk puts them back
 * to the driver's default (the kernels prefill shares with decode, e.g. the
 * chunk HC and norm kernels, ran 2.5-3.6% slower after a decode with the
 * decode carveout), and the next decode step sets it again. */
static bool g_in_decode; /* launches now belong to a decode step (decode_body, the profile) */
static int g_carve_pct = -2;
static bool g_carve_decode_only = true;
static int g_carve_phase = -1; /* the phase the carved kernels are set for: 1 decode, 0 prefill */
static std::vector<const void *> g_carved;
static void carveout_env(void) {
    if (g_carve_pct != -2) return;
    const char *e = getenv("DS4_CUDA_CARVEOUT");
    if (!e) e = "d50";
    g_carve_decode_only = *e == 'd';
    if (g_carve_decode_only) e++;
    g_carve_pct = *e >= '0' && *e <= '9' && atoi(e) <= 100 ? atoi(e) : -1;
}
void cu_carveout(const void *kernel) {
    carveout_env();
    if (g_carve_pct < 0 || (g_carve_decode_only && !g_in_decode)) return;
    for (const void *k : g_carved)
        if (k == kernel) return;
    g_carved.push_back(kernel);
    cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, g_carve_pct);
}
/* the forward about to run is a decode step (graph or launches) or a prefill
 * chunk: with dN, the carved kernels get N or the default back */
static void carveout_phase(bool decode) {
    carveout_env();
    if (g_carve_pct < 0 || !g_carve_decode_only || g_carve_phase == (int)decode) return;
    g_carve_phase = decode;
    for (const void *k : g_carved)
        cudaFuncSetAttribute(k, cudaFuncAttributePreferredSharedMemoryCarveout,
                             decode ? g_carve_pct : (int)cudaSharedmemCarveoutDefault);
}

bool cu_dev_alloc(cu_alloc *cm, void **p, size_t bytes, char *err, size_t errlen, const char *what) {
    *p = NULL;
    if (!bytes) return true;
    cudaError_t e = cudaMalloc(p, (bytes + 255) & ~(size_t)255);
    if (e != cudaSuccess) {
        size_t fr = 0, tot = 0;
        cudaGetLastError();
        cudaMemGetInfo(&fr, &tot);
        snprintf(err, errlen,
                 "out of GPU memory for %s (%.2f GiB): %.2f GiB in use for weights, %.2f GiB free of %.2f GiB "
                 "(ds4-bench --layers N runs a model with fewer layers)",
                 what, bytes / 1073741824.0, cm->weight_bytes / 1073741824.0, fr / 1073741824.0, tot / 1073741824.0);
        return false;
    }
    cm->allocs.push_back(*p);
    return true;
}

/* split repack: raw blocks -> quant bytes + f16 scales */
__global__ void repack_kernel(const uint8_t *src, uint64_t n_blocks, int type, uint8_t *q, uint16_t *d) {
    const uint64_t b = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= n_blocks) return;
    const uint32_t bb = type == DS4_TYPE_Q8_0 ? 34 : 66, qb = bb - 2;
    const uint8_t *s = src + b * bb;
    d[b] = (uint16_t)(s[0] | (s[1] << 8));
    for (uint32_t i = 0; i < qb; i++) q[b * qb + i] = s[2 + i];
}

static __device__ __forceinline__ uint32_t hash32(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return (uint32_t)x;
}

/* random bytes everywhere, then sane scales (weights of std ~ 1/sqrt(n_in)) */
__global__ void random_fill_kernel(uint8_t *q, uint64_t n_bytes, uint64_t seed) {
    for (uint64_t i = ((uint64_t)blockIdx.x * blockDim.x + threadIdx.x) * 4; i < n_bytes;
         i += (uint64_t)gridDim.x * blockDim.x * 4) {
        const uint32_t h = hash32(seed * 0x9E3779B97F4A7C15ull + i);
        if (i + 4 <= n_bytes) *(uint32_t *)(q + i) = h;
        else
            for (uint64_t k = i; k < n_bytes; k++) q[k] = (uint8_t)(h >> (8 * (k - i)));
    }
}

__global__ void random_fix_kernel(uint8_t *q, uint16_t *d, uint64_t n_units, int type, float amp, uint64_t seed) {
    for (uint64_t u = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; u < n_units; u += (uint64_t)gridDim.x * blockDim.x) {
        const float r = (hash32(seed + u * 7919) & 0xffffff) / 16777216.0f; /* [0, 1) */
        switch (type) {
        case DS4_TYPE_F32: ((float *)q)[u] = (2 * r - 1) * amp * 1.732f; break;
        case DS4_TYPE_F16: ((__half *)q)[u] = __float2half((2 * r - 1) * amp * 1.732f); break;
        case DS4_TYPE_BF16: ((__nv_bfloat16 *)q)[u] = __float2bfloat16((2 * r - 1) * amp * 1.732f); break;
        case DS4_TYPE_Q8_0: d[u] = __half_as_ushort(__float2half(amp / 73.0f)); break;
        case DS4_TYPE_IQ2_XXS: d[u] = __half_as_ushort(__float2half(amp / 50.0f)); break;
        case DS4_TYPE_Q2_K: {
            uint16_t *dd = (uint16_t *)(q + u * 84 + 80);
            dd[0] = __half_as_ushort(__float2half(amp / 11.0f));
            dd[1] = __half_as_ushort(__float2half(amp / 20.0f));
            break;
        }
        case DS4_TYPE_Q4_K: {
            uint16_t *dd = (uint16_t *)(q + u * 144);
            dd[0] = __half_as_ushort(__float2half(amp / 240.0f));
            dd[1] = __half_as_ushort(__float2half(amp / 500.0f));
            break;
        }
        default: break;
        }
    }
}

__global__ void fill_f32_kernel(float *p, uint64_t n, float v) {
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x) p[i] = v;
}

__global__ void random_f32_kernel(float *p, uint64_t n, float amp, uint64_t seed) {
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x)
        p[i] = ((hash32(seed * 31 + i) & 0xffffff) / 16777216.0f * 2 - 1) * amp;
}

static void fill_f32(cudaStream_t st, float *p, uint64_t n, float v) {
    if (!n) return;
    uint64_t blocks = (n + 255) / 256;
    fill_f32_kernel<<<(unsigned)(blocks < 65535 ? blocks : 65535), 256, 0, st>>>(p, n, v);
}

/* Puts one weight on the device (upload + repack, or random when data is NULL). */
bool cu_weight_upload(cu_alloc *cm, const ds4_weight *w, dweight *out, uint64_t seed, uint8_t *staging,
                      size_t staging_bytes, double *progress, double total, char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    out->type = w->type;
    out->n_in = (uint32_t)w->n_in;
    out->n_out = (uint32_t)w->n_out;
    out->n_mat = (uint32_t)w->n_mat;
    if (!w->n_in || !w->n_out) return true; /* absent */
    const uint64_t rows = w->n_out * (w->n_mat ? w->n_mat : 1);
    const bool split = dw_split(w->type);
    const uint32_t spr = split ? dw_scales_per_row(w->type, (uint32_t)w->n_in) : 0;
    const uint64_t qrow = split ? (w->type == DS4_TYPE_Q8_0 ? w->n_in : w->n_in / 256 * 64) : w->row_bytes;
    out->row_bytes = qrow;
    void *q = NULL, *d = NULL;
    if (!cu_dev_alloc(cm, &q, rows * qrow, err, errlen, "weights")) return false;
    if (split && !cu_dev_alloc(cm, &d, rows * spr * 2, err, errlen, "weight scales")) return false;
    out->q = (const uint8_t *)q;
    out->d = (const __half *)d;
    cm->weight_bytes += rows * qrow + rows * spr * 2;
    if (!w->data) {
        const uint64_t bytes = rows * qrow;
        random_fill_kernel<<<4096, 256, 0, cm->st>>>((uint8_t *)q, bytes, seed);
        const float amp = 1.0f / sqrtf((float)w->n_in);
        uint64_t units = 0;
        switch (w->type) {
        case DS4_TYPE_F32: units = bytes / 4; break;
        case DS4_TYPE_F16: case DS4_TYPE_BF16: units = bytes / 2; break;
        case DS4_TYPE_Q8_0: case DS4_TYPE_IQ2_XXS: units = rows * spr; break;
        case DS4_TYPE_Q2_K: case DS4_TYPE_Q4_K: units = rows * (w->n_in / 256); break;
        default: break;
        }
        if (units) random_fix_kernel<<<4096, 256, 0, cm->st>>>((uint8_t *)q, (uint16_t *)d, units, w->type, amp, seed + 1);
        CU_OK(cudaGetLastError(), err, errlen, "random weights");
        return true;
    }
    const uint64_t rb = w->row_bytes;
    const uint64_t rows_per = staging_bytes / rb > 0 ? staging_bytes / rb : 1;
    for (uint64_t r0 = 0; r0 < rows; r0 += rows_per) {
        const uint64_t nr = rows - r0 < rows_per ? rows - r0 : rows_per;
        const uint8_t *src = w->data + r0 * rb;
        if (!split) {
            CU_OK(cudaMemcpy((uint8_t *)q + r0 * qrow, src, nr * rb, cudaMemcpyHostToDevice), err, errlen, "weight upload");
        } else {
            CU_OK(cudaMemcpy(staging, src, nr * rb, cudaMemcpyHostToDevice), err, errlen, "weight upload");
            const uint64_t nb = nr * spr;
            repack_kernel<<<(unsigned)((nb + 255) / 256), 256, 0, cm->st>>>(staging, nb, w->type, (uint8_t *)q + r0 * qrow,
                                                                            (uint16_t *)d + r0 * spr);
            CU_OK(cudaStreamSynchronize(cm->st), err, errlen, "weight repack");
        }
        if (progress) {
            const double before = *progress;
            *progress += (double)nr * rb;
            if ((uint64_t)(before / 2e9) != (uint64_t)(*progress / 2e9))
                fprintf(stderr, "\rds4: uploading weights to the GPU: %5.1f / %.1f GiB", *progress / 1073741824.0,
                        total / 1073741824.0);
        }
    }
    return true;
}

static bool up_vec(cu_alloc *cm, const void *h, size_t bytes, const float **out, char *err, size_t errlen) {
    *out = NULL;
    if (!h || !bytes) return true;
    void *p;
    if (!cu_dev_alloc(cm, &p, bytes, err, errlen, "vectors")) return false;
    CU_OK(cudaMemcpy(p, h, bytes, cudaMemcpyHostToDevice), err, errlen, "vector upload");
    cm->weight_bytes += bytes;
    *out = (const float *)p;
    return true;
}

static double weight_host_bytes(const ds4_weight *w) {
    return w->data ? (double)w->row_bytes * w->n_out * (w->n_mat ? w->n_mat : 1) : 0;
}

/* rows of matvec weights must suit the vectorised kernels */
static bool check_rows(const ds4_weight *w, const char *name, uint32_t il, char *err, size_t errlen) {
    if (!w->n_in) return true;
    uint64_t need = 8;
    if (w->type == DS4_TYPE_Q8_0) need = 32;
    if (w->type == DS4_TYPE_Q2_K || w->type == DS4_TYPE_Q4_K || w->type == DS4_TYPE_IQ2_XXS) need = 256;
    bool ok = w->n_in % need == 0;
    ok = ok && (w->type == DS4_TYPE_F32 || w->type == DS4_TYPE_F16 || w->type == DS4_TYPE_BF16 ||
                w->type == DS4_TYPE_Q8_0 || w->type == DS4_TYPE_Q2_K || w->type == DS4_TYPE_Q4_K ||
                w->type == DS4_TYPE_IQ2_XXS);
    if (!ok) snprintf(err, errlen, "CUDA backend: layer %u %s: type %s with rows of %llu values is not supported", il,
                      name, ds4_dtype_name(w->type), (unsigned long long)w->n_in);
    return ok;
}

static void cu_model_free(ds4_model *m);

/* an A/B switch: on unless the environment variable is "0" */
static bool switch_on(const char *name) {
    const char *e = getenv(name);
    return !(e && !strcmp(e, "0"));
}

static bool cu_model_init(ds4_model *m, char *err, size_t errlen) {
    cu_model *cm = new cu_model();
    m->bk = cm;
    cm->weight_bytes = 0;
    const char *sy = getenv("DS4_CUDA_SYNC");
    cm->sync_each = sy && *sy && strcmp(sy, "0") != 0;
    cm->use_graph = switch_on("DS4_CUDA_GRAPH");
    CU_OK(cudaSetDevice(0), err, errlen, "select device 0");
    /* a blocking stream: ordered with the synchronous cudaMemcpy uploads */
    CU_OK(cudaStreamCreate(&cm->st), err, errlen, "stream");
    CU_OK(cudaStreamCreate(&cm->side), err, errlen, "stream");
    CU_OK(cudaStreamCreate(&cm->hcs), err, errlen, "stream");
    CU_OK(cudaEventCreateWithFlags(&cm->hcs_fork_ev, cudaEventDisableTiming), err, errlen, "event");
    CU_OK(cudaEventCreateWithFlags(&cm->hcs_join_ev, cudaEventDisableTiming), err, errlen, "event");
    for (int i = 0; i < 3; i++) {
        CU_OK(cudaEventCreateWithFlags(&cm->fork_ev[i], cudaEventDisableTiming), err, errlen, "event");
        CU_OK(cudaEventCreateWithFlags(&cm->join_ev[i], cudaEventDisableTiming), err, errlen, "event");
    }
    cm->concurrent = switch_on("DS4_CUDA_STREAMS");
    cm->side_fused = switch_on("DS4_CUDA_SIDE_FUSED");
    cm->router_alone = switch_on("DS4_CUDA_ROUTER_ALONE");
    cm->q_in_attn = switch_on("DS4_CUDA_Q_IN_ATTN");
    cm->route_in_router = switch_on("DS4_CUDA_ROUTE_IN_ROUTER");
    cm->hc_gram = switch_on("DS4_CUDA_HC_GRAM");
    cm->split_side = switch_on("DS4_CUDA_HC_SPLIT_SIDE");
    cm->indexer_side = switch_on("DS4_CUDA_INDEXER_SIDE");
    cm->indexer_hcs = switch_on("DS4_CUDA_INDEXER_HCS");
    const char *dp = getenv("DS4_CUDA_DOWN_PREFETCH");
    cm->down_prefetch = dp && !strcmp(dp, "1");
    const char *fe = getenv("DS4_CUDA_FIN");
    if (!fe) fe = "norm";
    cm->fin_norm = strstr(fe, "norm") != NULL;
    cm->fin_experts = strstr(fe, "experts") != NULL;
    cm->fin_shared = strstr(fe, "shared") != NULL;
    cm->fin_quant = strstr(fe, "quant") != NULL;
    const char *hs = getenv("DS4_CUDA_HC_SPLIT_STREAM");
    cm->split_stream = hs && *hs >= '0' && *hs <= '2' ? *hs - '0' : 2;
    if (!cu_tables_init(err, errlen) || !cu_attn_init(err, errlen)) return false;
    const ds4_hparams *hp = m->hp;
    const ds4_model_weights *w = m->w;
    if (hp->n_hc > 8) {
        snprintf(err, errlen, "CUDA backend: %u hyper-connection streams (at most 8 supported)", hp->n_hc);
        return false;
    }
    if (hp->head_dim != 128 && hp->head_dim != 256 && hp->head_dim != 512 && hp->head_dim != 1024) {
        snprintf(err, errlen, "CUDA backend: head_dim %u (128, 256, 512 or 1024 supported)", hp->head_dim);
        return false;
    }
    if (hp->n_expert_used > 16) {
        snprintf(err, errlen, "CUDA backend: %u experts per token (at most 16 supported)", hp->n_expert_used);
        return false;
    }
    /* total bytes for the progress line */
    double total = weight_host_bytes(&w->tok_embd) + weight_host_bytes(&w->out_hc_fn) + weight_host_bytes(&w->output);
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        const ds4_layer *L = &w->layers[il];
        const ds4_weight *ws[] = {&L->hc_attn_fn, &L->hc_ffn_fn, &L->q_a, &L->q_b, &L->kv, &L->out_a, &L->out_b,
                                  &L->comp_ape, &L->comp_kv, &L->comp_gate, &L->idx_q_b, &L->idx_proj, &L->idx_ape,
                                  &L->idx_kv, &L->idx_gate, &L->router, &L->gate_exps, &L->up_exps, &L->down_exps,
                                  &L->gate_sh, &L->up_sh, &L->down_sh};
        for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) total += weight_host_bytes(ws[i]);
    }
    const size_t staging_bytes = 256u << 20;
    void *staging = NULL;
    CU_OK(cudaMalloc(&staging, staging_bytes), err, errlen, "staging buffer");
    const struct timespec t0 = {0, 0};
    struct timespec ts0, ts1;
    clock_gettime(CLOCK_MONOTONIC, &ts0);
    (void)t0;
    double progress = 0;
    uint64_t seed = 1234567;
    bool ok = true;
#define UP(dst, src)                                                                                                 \
    ok = ok && cu_weight_upload(cm, src, dst, seed++, (uint8_t *)staging, staging_bytes, &progress, total, err, errlen)
    UP(&cm->tok_embd, &w->tok_embd);
    UP(&cm->out_hc_fn, &w->out_hc_fn);
    UP(&cm->output, &w->output);
    ok = ok && check_rows(&w->output, "output", 0, err, errlen);
    const uint32_t C = hp->n_hc, E = hp->n_embd, M = (2 + C) * C, X = hp->n_expert;
    ok = ok && up_vec(cm, w->out_hc_base, C * 4, &cm->out_hc_base, err, errlen);
    ok = ok && up_vec(cm, w->out_hc_scale, 4, &cm->out_hc_scale, err, errlen);
    ok = ok && up_vec(cm, w->out_norm, E * 4, &cm->out_norm, err, errlen);
    cm->L.resize(hp->n_layer);
    for (uint32_t il = 0; ok && il < hp->n_layer; il++) {
        const ds4_layer *L = &w->layers[il];
        cu_layer *D = &cm->L[il];
        memset(D, 0, sizeof *D);
        const uint32_t ratio = hp->compress_ratio[il];
        UP(&D->hc_attn_fn, &L->hc_attn_fn);
        UP(&D->hc_ffn_fn, &L->hc_ffn_fn);
        UP(&D->q_a, &L->q_a);
        UP(&D->q_b, &L->q_b);
        UP(&D->kv, &L->kv);
        UP(&D->out_a, &L->out_a);
        UP(&D->out_b, &L->out_b);
        UP(&D->comp_ape, &L->comp_ape);
        UP(&D->comp_kv, &L->comp_kv);
        UP(&D->comp_gate, &L->comp_gate);
        UP(&D->idx_q_b, &L->idx_q_b);
        UP(&D->idx_proj, &L->idx_proj);
        UP(&D->idx_ape, &L->idx_ape);
        UP(&D->idx_kv, &L->idx_kv);
        UP(&D->idx_gate, &L->idx_gate);
        UP(&D->router, &L->router);
        UP(&D->gate_exps, &L->gate_exps);
        UP(&D->up_exps, &L->up_exps);
        UP(&D->down_exps, &L->down_exps);
        UP(&D->gate_sh, &L->gate_sh);
        UP(&D->up_sh, &L->up_sh);
        UP(&D->down_sh, &L->down_sh);
        const ds4_weight *mv[] = {&L->q_a, &L->q_b, &L->kv, &L->out_a, &L->out_b, &L->comp_kv, &L->comp_gate,
                                  &L->idx_q_b, &L->idx_proj, &L->idx_kv, &L->idx_gate, &L->router, &L->gate_exps,
                                  &L->up_exps, &L->down_exps, &L->gate_sh, &L->up_sh, &L->down_sh};
        for (size_t i = 0; ok && i < sizeof mv / sizeof mv[0]; i++) ok = check_rows(mv[i], "weight", il, err, errlen);
        ok = ok && up_vec(cm, L->hc_attn_scale, 12, &D->hc_attn_scale, err, errlen);
        ok = ok && up_vec(cm, L->hc_attn_base, M * 4, &D->hc_attn_base, err, errlen);
        ok = ok && up_vec(cm, L->hc_ffn_scale, 12, &D->hc_ffn_scale, err, errlen);
        ok = ok && up_vec(cm, L->hc_ffn_base, M * 4, &D->hc_ffn_base, err, errlen);
        ok = ok && up_vec(cm, L->attn_norm, E * 4, &D->attn_norm, err, errlen);
        ok = ok && up_vec(cm, L->q_a_norm, hp->q_lora_rank * 4, &D->q_a_norm, err, errlen);
        ok = ok && up_vec(cm, L->kv_norm, hp->head_dim * 4, &D->kv_norm, err, errlen);
        ok = ok && up_vec(cm, L->sinks, hp->n_head * 4, &D->sinks, err, errlen);
        if (ratio) ok = ok && up_vec(cm, L->comp_norm, hp->head_dim * 4, &D->comp_norm, err, errlen);
        if (ratio == 4) ok = ok && up_vec(cm, L->idx_norm, hp->indexer_head_dim * 4, &D->idx_norm, err, errlen);
        ok = ok && up_vec(cm, L->ffn_norm, E * 4, &D->ffn_norm, err, errlen);
        ok = ok && up_vec(cm, L->expert_bias, X * 4, &D->expert_bias, err, errlen);
        if (L->tid2eid) {
            const float *p = NULL;
            ok = ok && up_vec(cm, L->tid2eid, (size_t)hp->n_expert_used * hp->n_vocab * 4, &p, err, errlen);
            D->tid2eid = (const int32_t *)p;
        }
    }
#undef UP
    cudaFree(staging);
    ok = ok && up_vec(cm, m->rope_main, hp->n_rot / 2 * 4, (const float **)&cm->rope_main, err, errlen);
    ok = ok && up_vec(cm, m->rope_comp, hp->n_rot / 2 * 4, (const float **)&cm->rope_comp, err, errlen);
    if (ok) {
        cudaError_t e = cudaStreamSynchronize(cm->st);
        if (e != cudaSuccess) {
            snprintf(err, errlen, "CUDA weight setup: %s", cudaGetErrorString(e));
            ok = false;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &ts1);
    if (total > 0) fprintf(stderr, "\r%60s\r", "");
    if (ok) {
        cudaDeviceProp prop;
        cudaGetDeviceProperties(&prop, 0);
        fprintf(stderr, "ds4: CUDA %s: %.2f GiB of weights on the GPU (%s) in %.1f s\n", prop.name,
                cm->weight_bytes / 1073741824.0, total > 0 ? "uploaded" : "synthetic",
                (ts1.tv_sec - ts0.tv_sec) + (ts1.tv_nsec - ts0.tv_nsec) / 1e9);
        /* the default prefill chunk by what the weights leave free: 8192
         * tokens with >= 32 GiB (H200 flash-q2, 8k prompt: 4773 tok/s against
         * 4517 at 4096; ~8.7 GiB of scratch at 32k context), else 4096 */
        size_t fr = 0, tot = 0;
        if (m->prefill_chunk_auto && cudaMemGetInfo(&fr, &tot) == cudaSuccess && fr >= ((size_t)32 << 30))
            m->prefill_chunk = 8192;
    }
    if (!ok) {
        cu_model_free(m);
        m->bk = NULL;
    }
    return ok;
}

static void cu_model_free(ds4_model *m) {
    cu_model *cm = CM(m);
    if (!cm) return;
    for (void *p : cm->allocs) cudaFree(p);
    if (cm->st) cudaStreamDestroy(cm->st);
    if (cm->side) cudaStreamDestroy(cm->side);
    if (cm->hcs) cudaStreamDestroy(cm->hcs);
    for (int i = 0; i < 3; i++) {
        if (cm->fork_ev[i]) cudaEventDestroy(cm->fork_ev[i]);
        if (cm->join_ev[i]) cudaEventDestroy(cm->join_ev[i]);
    }
    if (cm->hcs_fork_ev) cudaEventDestroy(cm->hcs_fork_ev);
    if (cm->hcs_join_ev) cudaEventDestroy(cm->hcs_join_ev);
    delete cm;
    m->bk = NULL;
}

/* ------------------------------------------------------------------------ */
/* session */

/* cu_lstate, cu_session: cuda_backend.cuh */

/* bump allocator over one cudaMalloc, 256-byte aligned pieces */
typedef struct {
    uint8_t *base;
    size_t used;
} carve;
static void *take(carve *c, size_t bytes) {
    void *p = c->base ? c->base + c->used : NULL;
    c->used += (bytes + 255) & ~(size_t)255;
    return p;
}

static void take_act(carve *c, dact *a, uint32_t rows, uint32_t n) {
    a->n = n;
    a->rows = rows;
    a->f = (float *)take(c, (size_t)rows * n * 4);
    a->q8 = NULL; a->d8 = NULL; a->qk = NULL; a->dk = NULL; a->bk = NULL;
    if (n % 32 == 0) {
        a->q8 = (int8_t *)take(c, (size_t)rows * n);
        a->d8 = (float *)take(c, (size_t)rows * n / 32 * 4);
    }
    if (n % 256 == 0) {
        a->qk = (int8_t *)take(c, (size_t)rows * n);
        a->dk = (float *)take(c, (size_t)rows * n / 256 * 4);
        a->bk = (int32_t *)take(c, (size_t)rows * n / 16 * 4);
    }
}

static uint32_t max_comp_cap(const ds4_hparams *hp, uint32_t n_ctx) {
    uint32_t cap = 1;
    for (uint32_t il = 0; il < hp->n_layer; il++)
        if (hp->compress_ratio[il] == 4) cap = ds4_comp_cap(n_ctx, 4) > cap ? ds4_comp_cap(n_ctx, 4) : cap;
    return cap;
}

/* Lays out (base NULL: only sizes) the state and the scratch. */
static void layout_state(const ds4_session *s, cu_session *cs, carve *c) {
    const ds4_hparams *hp = s->m->hp;
    const uint32_t D = hp->head_dim, ID = hp->indexer_head_dim;
    cs->ls.resize(hp->n_layer);
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        cu_lstate *st = &cs->ls[il];
        const uint32_t ratio = hp->compress_ratio[il], cc = ratio == 4 ? 2 : 1;
        st->raw = (float *)take(c, (size_t)s->raw_cap * D * 4);
        st->comp_cap = ratio ? ds4_comp_cap(s->n_ctx, ratio) : 0;
        st->comp = st->comp_kv = st->comp_sc = st->idx = st->idx_kv = st->idx_sc = NULL;
        if (ratio) {
            st->comp = (float *)take(c, (size_t)st->comp_cap * D * 4);
            st->comp_kv = (float *)take(c, (size_t)cc * ratio * cc * D * 4);
            st->comp_sc = (float *)take(c, (size_t)cc * ratio * cc * D * 4);
        }
        if (ratio == 4) {
            st->idx = (float *)take(c, (size_t)st->comp_cap * ID * 4);
            st->idx_kv = (float *)take(c, (size_t)cc * ratio * cc * ID * 4);
            st->idx_sc = (float *)take(c, (size_t)cc * ratio * cc * ID * 4);
        }
    }
}

static void layout_scratch(const ds4_session *s, cu_session *cs, carve *c) {
    const ds4_hparams *hp = s->m->hp;
    const uint32_t T = cs->T_cap, C = hp->n_hc, E = hp->n_embd, M = (2 + C) * C, H = hp->n_head, D = hp->head_dim;
    const uint32_t Q = hp->q_lora_rank, I = hp->n_indexer_head, ID = hp->indexer_head_dim, X = hp->n_expert;
    const uint32_t K = hp->n_expert_used, F = hp->n_ff_exp, G = hp->n_out_group, OR = hp->o_lora_rank;
    const uint32_t V = hp->n_vocab, KT = hp->indexer_top_k;
    const uint32_t cap = max_comp_cap(hp, s->n_ctx);
    cs->tokens = (int32_t *)take(c, (size_t)T * 4);
    cs->next = (int32_t *)take(c, 4);
    cs->pos0 = (int64_t *)take(c, 8);
    cs->R = (float *)take(c, (size_t)T * C * E * 4);
    cs->mix = (float *)take(c, (size_t)T * M * 4);
    cs->hcpart = (float *)take(c, cu_hc_part_floats(T, M > C ? M : C, C, E) * 4);
    cs->amax = (float *)take(c, cu_argmax_scratch_floats(1) * 4);
    cs->hcgram = (double *)take(c, cu_hc_gram_doubles(C, E) * 8);
    cs->fin_cnt = (uint32_t *)take(c, FIN_SLOTS * 4);
    cs->pre = (float *)take(c, (size_t)T * C * 4);
    cs->post = (float *)take(c, (size_t)T * C * 4);
    cs->comb = (float *)take(c, (size_t)T * C * C * 4);
    take_act(c, &cs->a, T, E);
    take_act(c, &cs->qa, T, Q);
    cs->kvb = (float *)take(c, (size_t)T * D * 4);
    cs->q = (float *)take(c, (size_t)T * H * D * 4);
    cs->pkv = (float *)take(c, (size_t)T * 2 * D * 4);
    cs->psc = (float *)take(c, (size_t)T * 2 * D * 4);
    cs->ikv = (float *)take(c, (size_t)T * 2 * ID * 4);
    cs->isc = (float *)take(c, (size_t)T * 2 * ID * 4);
    cs->wi = (float *)take(c, (size_t)T * I * 4);
    cs->qi = (float *)take(c, (size_t)T * I * ID * 4);
    cs->pooled = (float *)take(c, (size_t)(T / 4 + 2) * D * 4);
    cs->ipooled = (float *)take(c, (size_t)(T / 4 + 2) * ID * 4);
    cs->scores = (float *)take(c, (size_t)T * cap * 4);
    cs->sel = (uint32_t *)take(c, (size_t)T * KT * 4);
    cs->n_sel = (uint32_t *)take(c, (size_t)T * 4);
    const size_t pf1 = cu_attention_part_floats(1, H, D, cs->splits1), pfT = cu_attention_part_floats(T, H, D, cs->splitsT);
    cs->part_floats = pf1 > pfT ? pf1 : pfT;
    cs->part = (float *)take(c, cs->part_floats * 4);
    take_act(c, &cs->o, T, H * D);
    take_act(c, &cs->low, T, G * OR);
    cs->y = (float *)take(c, (size_t)T * E * 4);
    take_act(c, &cs->f, T, E);
    cs->rl = (float *)take(c, (size_t)T * X * 4);
    cs->sg = (float *)take(c, (size_t)T * F * 4);
    cs->su = (float *)take(c, (size_t)T * F * 4);
    take_act(c, &cs->sh, T, F);
    cs->ysh = (float *)take(c, (size_t)T * E * 4);
    cs->ids = (int32_t *)take(c, (size_t)T * K * 4);
    cs->wts = (float *)take(c, (size_t)T * K * 4);
    cs->cnt = (int32_t *)take(c, (size_t)X * 4);
    cs->off = (int32_t *)take(c, (size_t)X * 4);
    cs->list = (int32_t *)take(c, (size_t)T * K * 4);
    cs->g = (float *)take(c, (size_t)T * K * F * 4);
    cs->u = (float *)take(c, (size_t)T * K * F * 4);
    take_act(c, &cs->h, T * K, F);
    cs->ye = (float *)take(c, (size_t)T * K * E * 4);
    take_act(c, &cs->hx, cs->lchunk, E);
    cs->logits = (float *)take(c, (size_t)cs->lchunk * V * 4);
}

static void cu_session_free(ds4_session *s);

static bool cu_session_init(ds4_session *s, char *err, size_t errlen) {
    cu_model *cm = CM(s->m);
    const ds4_hparams *hp = s->m->hp;
    cu_session *cs = new cu_session();
    s->bk = cs;
    cs->state_mem = cs->scratch_mem = NULL;
    for (bool &r : cs->graph_ready) r = false;
    cs->T_cap = (uint32_t)s->m->prefill_chunk;
    cs->lchunk = cs->T_cap < 16 ? cs->T_cap : 16;
    const uint32_t HG = (hp->n_head + 7) / 8;
    cs->splits1 = (264 + HG - 1) / HG;
    if (cs->splits1 > 32) cs->splits1 = 32;
    if (cs->splits1 < 1) cs->splits1 = 1;
    if (const char *e = getenv("DS4_CUDA_ATT_SPLITS")) /* (measurements: 1..32) */
        if (atoi(e) >= 1 && atoi(e) <= 32) cs->splits1 = (uint32_t)atoi(e);
    cs->splitsT = 1;
    carve c0 = {NULL, 0}, c1 = {NULL, 0};
    layout_state(s, cs, &c0);
    layout_scratch(s, cs, &c1);
    cs->state_bytes = c0.used;
    cs->scratch_bytes = c1.used;
    size_t fr = 0, tot = 0;
    CU_OK(cudaMemGetInfo(&fr, &tot), err, errlen, "memory info");
    const size_t need = cs->state_bytes + cs->scratch_bytes, margin = 256u << 20;
    if (need + margin > fr) {
        snprintf(err, errlen,
                 "context of %u tokens does not fit on the GPU: it needs %.2f GiB (KV state %.2f GiB + scratch %.2f GiB "
                 "for %u-token prefill chunks) but %.2f GiB are free after %.2f GiB of weights (card: %.2f GiB); "
                 "use a smaller --ctx or prefill chunk (--chunk)",
                 s->n_ctx, need / 1073741824.0, cs->state_bytes / 1073741824.0, cs->scratch_bytes / 1073741824.0,
                 cs->T_cap, fr / 1073741824.0, cm->weight_bytes / 1073741824.0, tot / 1073741824.0);
        return false;
    }
    CU_OK(cudaMalloc(&cs->state_mem, cs->state_bytes), err, errlen, "KV state");
    CU_OK(cudaMalloc(&cs->scratch_mem, cs->scratch_bytes), err, errlen, "scratch");
    c0 = {(uint8_t *)cs->state_mem, 0};
    c1 = {(uint8_t *)cs->scratch_mem, 0};
    layout_state(s, cs, &c0);
    layout_scratch(s, cs, &c1);
    CU_OK(cudaMemsetAsync(cs->state_mem, 0, cs->state_bytes, cm->st), err, errlen, "state clear");
    CU_OK(cudaMemsetAsync(cs->fin_cnt, 0, FIN_SLOTS * 4, cm->st), err, errlen, "counters clear");
    CU_OK(cudaMallocHost(&cs->h_tokens, (size_t)cs->T_cap * 4), err, errlen, "pinned tokens");
    CU_OK(cudaMallocHost(&cs->h_pos0, 8), err, errlen, "pinned position");
    CU_OK(cudaMallocHost(&cs->h_logits, (size_t)hp->n_vocab * 4), err, errlen, "pinned logits");
    return true;
}

static void drop_graphs(cu_session *cs) {
    for (int v = 0; v < 3; v++) {
        if (cs->graph_ready[v]) cudaGraphExecDestroy(cs->graph[v]);
        cs->graph_ready[v] = false;
    }
}

static void cu_session_free(ds4_session *s) {
    cu_session *cs = CS(s);
    if (!cs) return;
    drop_graphs(cs);
    cudaFree(cs->state_mem);
    cudaFree(cs->scratch_mem);
    cudaFreeHost(cs->h_tokens);
    cudaFreeHost(cs->h_pos0);
    cudaFreeHost(cs->h_logits);
    delete cs;
    s->bk = NULL;
}

static void cu_session_reset(ds4_session *s) {
    cu_session *cs = CS(s);
    cu_model *cm = CM(s->m);
    const ds4_hparams *hp = s->m->hp;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        const uint32_t ratio = hp->compress_ratio[il], cc = ratio == 4 ? 2 : 1;
        cu_lstate *st = &cs->ls[il];
        if (ratio) {
            const size_t n = (size_t)cc * ratio * cc * hp->head_dim;
            cudaMemsetAsync(st->comp_kv, 0, n * 4, cm->st);
            fill_f32(cm->st, st->comp_sc, n, -INFINITY);
        }
        if (ratio == 4) {
            const size_t n = (size_t)cc * ratio * cc * hp->indexer_head_dim;
            cudaMemsetAsync(st->idx_kv, 0, n * 4, cm->st);
            fill_f32(cm->st, st->idx_sc, n, -INFINITY);
        }
    }
    cudaStreamSynchronize(cm->st);
}

static void cu_state_to_host(ds4_session *s) {
    cu_session *cs = CS(s);
    cu_model *cm = CM(s->m);
    const ds4_hparams *hp = s->m->hp;
    const uint32_t D = hp->head_dim, ID = hp->indexer_head_dim, n = s->n_tokens;
    cudaStreamSynchronize(cm->st);
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        const uint32_t ratio = hp->compress_ratio[il], cc = ratio == 4 ? 2 : 1;
        const cu_lstate *d = &cs->ls[il];
        ds4_layer_state *h = &s->ls[il];
        cudaMemcpy(h->raw, d->raw, (size_t)s->raw_cap * D * 4, cudaMemcpyDeviceToHost);
        if (ratio) {
            h->n_comp = n / ratio;
            cudaMemcpy(h->comp, d->comp, (size_t)h->n_comp * D * 4, cudaMemcpyDeviceToHost);
            cudaMemcpy(h->comp_kv, d->comp_kv, (size_t)cc * ratio * cc * D * 4, cudaMemcpyDeviceToHost);
            cudaMemcpy(h->comp_sc, d->comp_sc, (size_t)cc * ratio * cc * D * 4, cudaMemcpyDeviceToHost);
        }
        if (ratio == 4) {
            h->n_idx = n / ratio;
            cudaMemcpy(h->idx, d->idx, (size_t)h->n_idx * ID * 4, cudaMemcpyDeviceToHost);
            cudaMemcpy(h->idx_kv, d->idx_kv, (size_t)cc * ratio * cc * ID * 4, cudaMemcpyDeviceToHost);
            cudaMemcpy(h->idx_sc, d->idx_sc, (size_t)cc * ratio * cc * ID * 4, cudaMemcpyDeviceToHost);
        }
    }
}

static void cu_state_from_host(ds4_session *s) {
    cu_session *cs = CS(s);
    cu_model *cm = CM(s->m);
    const ds4_hparams *hp = s->m->hp;
    const uint32_t D = hp->head_dim, ID = hp->indexer_head_dim;
    cudaStreamSynchronize(cm->st);
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        const uint32_t ratio = hp->compress_ratio[il], cc = ratio == 4 ? 2 : 1;
        const cu_lstate *d = &cs->ls[il];
        const ds4_layer_state *h = &s->ls[il];
        cudaMemcpy(d->raw, h->raw, (size_t)s->raw_cap * D * 4, cudaMemcpyHostToDevice);
        if (ratio) {
            cudaMemcpy(d->comp, h->comp, (size_t)h->n_comp * D * 4, cudaMemcpyHostToDevice);
            cudaMemcpy(d->comp_kv, h->comp_kv, (size_t)cc * ratio * cc * D * 4, cudaMemcpyHostToDevice);
            cudaMemcpy(d->comp_sc, h->comp_sc, (size_t)cc * ratio * cc * D * 4, cudaMemcpyHostToDevice);
        }
        if (ratio == 4) {
            cudaMemcpy(d->idx, h->idx, (size_t)h->n_idx * ID * 4, cudaMemcpyHostToDevice);
            cudaMemcpy(d->idx_kv, h->idx_kv, (size_t)cc * ratio * cc * ID * 4, cudaMemcpyHostToDevice);
            cudaMemcpy(d->idx_sc, h->idx_sc, (size_t)cc * ratio * cc * ID * 4, cudaMemcpyHostToDevice);
        }
    }
}

/* ------------------------------------------------------------------------ */
/* forward */

/* prof_mark, fwd: cuda_backend.cuh */

/* The side stream for a layer's independent branches; the main stream when
 * profiling or synchronising per step (so both see one ordered sequence). */
cudaStream_t side_of(const fwd *F) {
    return F->cm->concurrent && !F->marks && !F->cm->sync_each ? F->cm->side : F->cm->st;
}
/* `to` waits for everything queued on `from` so far (an event edge in the
 * captured graph); nothing when profiling or synchronising per step (one
 * stream then) */
static void stream_link(fwd *F, cudaEvent_t ev, cudaStream_t from, cudaStream_t to) {
    if (side_of(F) == F->cm->st) return;
    cudaEventRecord(ev, from);
    cudaStreamWaitEvent(to, ev, 0);
}
void fork_side(fwd *F, int i) { stream_link(F, F->cm->fork_ev[i], F->cm->st, F->cm->side); }
void join_side(fwd *F, int i) { stream_link(F, F->cm->join_ev[i], F->cm->side, F->cm->st); }
cudaStream_t hcs_of(const fwd *F) { return side_of(F) == F->cm->st ? F->cm->st : F->cm->hcs; }
void fork_hcs(fwd *F) { stream_link(F, F->cm->hcs_fork_ev, F->cm->st, F->cm->hcs); }
void join_hcs(fwd *F) { stream_link(F, F->cm->hcs_join_ev, F->cm->hcs, F->cm->st); }
void hcs_to_side(fwd *F) { stream_link(F, F->cm->hcs_join_ev, F->cm->hcs, F->cm->side); }

/* DS4_CUDA_SKIP=step,step,... (or ds4_cuda_set_skip): decode leaves out
 * the named steps (the names kcheck reports; "attention" also drops the o
 * quantization). A measurement aid only - the results are wrong while it is
 * set: the graph's rate without a step against the rate with it is what
 * the step really costs inside the graph (per-step events without the
 * graph carry a launch gap each). ds4-bench --skip-sweep walks them. */
static std::string g_skip;
static bool g_skip_env;
bool skipped(const char *what, uint32_t T) {
    if (!g_skip_env) {
        const char *e = getenv("DS4_CUDA_SKIP");
        if (e) g_skip = e;
        g_skip_env = true;
    }
    if (T != 1 || g_skip.empty()) return false;
    const size_t n = strlen(what);
    for (const char *p = g_skip.c_str();;) {
        const char *e = strchr(p, ',');
        const size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == n && !strncmp(p, what, n)) return true;
        if (!e) return false;
        p = e + 1;
    }
}

/* per-step times of the last profiled decode step */
static std::vector<std::pair<const char *, double>> g_prof;

/* DS4_CUDA_STEPTIME=1: host wall time per named forward step of prefill
 * chunks (device synchronised after each step, both streams), printed at
 * exit; a coarse profile of prefill (decode: ds4-bench --profile). */
static int g_steptime = -1;
static bool g_steptime_chunk = false;
static double g_step_t0 = 0;
static std::vector<std::pair<const char *, double>> g_steps;
static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}
static void steptime_report(void) {
    double tot = 0;
    for (auto &p : g_steps) tot += p.second;
    std::vector<std::pair<const char *, double>> v = g_steps;
    for (size_t i = 0; i < v.size(); i++)
        for (size_t j = i + 1; j < v.size(); j++)
            if (v[j].second > v[i].second) std::swap(v[i], v[j]);
    fprintf(stderr, "ds4 cuda prefill step times (DS4_CUDA_STEPTIME), total %.3f s:\n", tot);
    for (auto &p : v) fprintf(stderr, "  %-32s %8.3f s  %5.1f%%\n", p.first, p.second, tot > 0 ? 100 * p.second / tot : 0);
}
static bool steptime_on(void) {
    if (g_steptime < 0) {
        const char *e = getenv("DS4_CUDA_STEPTIME");
        g_steptime = e && *e == '1';
        if (g_steptime) atexit(steptime_report);
    }
    return g_steptime == 1;
}
static void steptime_mark(const char *what) {
    cudaDeviceSynchronize();
    const double t = now_s();
    if (what) {
        size_t i = 0;
        while (i < g_steps.size() && strcmp(g_steps[i].first, what)) i++;
        if (i == g_steps.size()) g_steps.push_back({what, 0.0});
        g_steps[i].second += t - g_step_t0;
    }
    g_step_t0 = t;
}

void kcheck(fwd *f, const char *what) {
    if (g_steptime_chunk) steptime_mark(what);
    if (f->marks) {
        prof_mark pm = {what, NULL};
        cudaEventCreate(&pm.ev);
        cudaEventRecord(pm.ev, f->cm->st);
        f->marks->push_back(pm);
    }
    if (!f->cm->sync_each || f->failed) return;
    cudaError_t e = cudaStreamSynchronize(f->cm->st);
    if (e == cudaSuccess) e = cudaGetLastError();
    if (e != cudaSuccess) {
        f->failed = what;
        f->error = e;
    }
}

/* the layer halves (attention_layer, ffn_layer): cuda_layers.cu */

/* HC head + output norm + LM head for tokens [t0, t0+n) -> cs->logits */
static void output_head(fwd *F, uint32_t t0, uint32_t n) {
    const ds4_hparams *hp = F->s->m->hp;
    cu_model *cm = F->cm;
    cu_session *cs = F->cs;
    const uint32_t C = hp->n_hc, E = hp->n_embd;
    /* partials formed by the last hc_post serve only a one-token step */
    const uint32_t mixed = t0 == 0 && n == 1 ? F->mix_S : 0;
    F->mix_S = 0;
    cu_head_hc(cm->st, cm->out_hc_fn, cm->out_hc_scale, cm->out_hc_base, cs->R + (size_t)t0 * C * E, n, C, E,
               (float)hp->rms_eps, (float)hp->hc_eps, cm->out_norm, cs->hcpart, cs->hx, mixed);
    mv_job j = job(cm->output, av_of(cs->hx), cs->logits, hp->n_vocab);
    cu_matvec(cm->st, &j, 1, n);
    kcheck(F, "output head");
}

static void run_layers(fwd *F, uint32_t T, cudaEvent_t *ev) {
    const ds4_hparams *hp = F->s->m->hp;
    cu_session *cs = F->cs;
    cu_dequant_rows(F->cm->st, F->cm->tok_embd, cs->tokens, T, cs->R, hp->n_hc);
    kcheck(F, "embedding");
    if (ev) cudaEventRecord(ev[0], F->cm->st);
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        attention_layer(F, il, T);
        ffn_layer(F, il, T);
        if (ev) cudaEventRecord(ev[il + 1], F->cm->st);
    }
}

/* decode step body: layers, head of the token, argmax into next (for the
 * device-side greedy loop), position += 1 */
__global__ void step_tail_kernel(int64_t *pos0, const int32_t *next, int32_t *tokens) {
    pdl_wait();
    pdl_trigger();
    pos0[0] += 1;
    tokens[0] = next[0];
}

static void decode_body(fwd *F) {
    carveout_phase(true);
    g_in_decode = true;
    run_layers(F, 1, NULL);
    output_head(F, 0, 1);
    cu_argmax(F->cm->st, F->cs->logits, 1, F->s->m->hp->n_vocab, F->cs->next, F->cs->amax);
    cu_launch(step_tail_kernel, 1, 1, 0, F->cm->st, F->cs->pos0, F->cs->next, F->cs->tokens);
    g_in_decode = false;
}

static bool finish(fwd *F, char *err, size_t errlen) {
    cudaError_t e = cudaStreamSynchronize(F->cm->st);
    if (e == cudaSuccess) e = cudaGetLastError();
    if (F->failed) {
        snprintf(err, errlen, "CUDA forward failed in %s: %s", F->failed, cudaGetErrorString(F->error));
        return false;
    }
    if (e != cudaSuccess) {
        snprintf(err, errlen, "CUDA forward failed: %s (DS4_CUDA_SYNC=1 names the kernel)", cudaGetErrorString(e));
        return false;
    }
    return true;
}

/* The decode variant for a step at position pos: the long-context one
 * (cluster top-k) once the compressed rows outnumber TOPK_CL_MIN_N */
static bool long_step(int64_t pos) { return (pos + 1) / 4 > TOPK_CL_MIN_N && cu_topk_cluster_ok(); }
/* the decode variant's flags for a step at position pos, and its graph slot */
static void step_variant(fwd *F, int64_t pos) {
    F->topk_cluster = long_step(pos);
    F->wide = cu_wide_angles(pos);
}
static int graph_slot(const fwd *F) { return F->wide ? 2 : F->topk_cluster ? 1 : 0; }

static bool ensure_graph(fwd *F, char *err, size_t errlen) {
    cu_session *cs = F->cs;
    const int v = graph_slot(F);
    if (cs->graph_ready[v]) return true;
    cudaStream_t sm = F->cm->st;
    cudaGraph_t g = NULL;
    cudaError_t e = cudaSuccess;
    for (int attempt = 0; attempt < 2; attempt++) {
        CU_OK(cudaStreamBeginCapture(sm, cudaStreamCaptureModeThreadLocal), err, errlen, "graph capture");
        decode_body(F);
        e = cudaStreamEndCapture(sm, &g);
        if (e == cudaSuccess) {
            e = cudaGraphInstantiate(&cs->graph[v], g, 0);
            cudaGraphDestroy(g);
        }
        if (e == cudaSuccess || !cu_pdl_enabled()) break;
        /* a driver that cannot capture programmatic launches: capture again without */
        fprintf(stderr, "ds4: CUDA graph with programmatic launches failed (%s); continuing without them\n",
                cudaGetErrorString(e));
        cudaGetLastError();
        g_pdl = 0;
    }
    CU_OK(e, err, errlen, "graph capture/instantiate");
    cs->graph_ready[v] = true;
    return true;
}

static bool cu_forward(ds4_session *s, const int32_t *tokens, uint32_t T, float *all_logits, char *err, size_t errlen) {
    cu_model *cm = CM(s->m);
    cu_session *cs = CS(s);
    const uint32_t V = s->m->hp->n_vocab;
    fwd F = {s, cm, cs, NULL, cudaSuccess, NULL};
    cudaStream_t sm = cm->st;
    memcpy(cs->h_tokens, tokens, (size_t)T * 4);
    cs->h_pos0[0] = s->n_tokens;
    CU_OK(cudaMemcpyAsync(cs->tokens, cs->h_tokens, (size_t)T * 4, cudaMemcpyHostToDevice, sm), err, errlen, "tokens");
    CU_OK(cudaMemcpyAsync(cs->pos0, cs->h_pos0, 8, cudaMemcpyHostToDevice, sm), err, errlen, "position");
    if (T == 1) step_variant(&F, s->n_tokens);
    if (T == 1 && cm->use_graph && !cm->sync_each && !s->trace_topk) {
        if (!ensure_graph(&F, err, errlen)) return false;
        carveout_phase(true);
        CU_OK(cudaGraphLaunch(cs->graph[graph_slot(&F)], sm), err, errlen, "graph launch");
    } else if (T == 1) {
        decode_body(&F);
    } else {
        carveout_phase(false);
        g_steptime_chunk = steptime_on();
        if (g_steptime_chunk) steptime_mark(NULL);
        run_layers(&F, T, NULL);
        g_steptime_chunk = false;
    }
    if (T == 1) {
        CU_OK(cudaMemcpyAsync(cs->h_logits, cs->logits, (size_t)V * 4, cudaMemcpyDeviceToHost, sm), err, errlen, "logits");
        if (!finish(&F, err, errlen)) return false;
        memcpy(s->logits, cs->h_logits, (size_t)V * 4);
        if (all_logits) memcpy(all_logits, cs->h_logits, (size_t)V * 4);
        return true;
    }
    if (all_logits) {
        for (uint32_t t0 = 0; t0 < T; t0 += cs->lchunk) {
            const uint32_t n = T - t0 < cs->lchunk ? T - t0 : cs->lchunk;
            output_head(&F, t0, n);
            CU_OK(cudaMemcpyAsync(all_logits + (size_t)t0 * V, cs->logits, (size_t)n * V * 4, cudaMemcpyDeviceToHost, sm),
                  err, errlen, "logits");
            CU_OK(cudaStreamSynchronize(sm), err, errlen, "logits");
        }
        if (!finish(&F, err, errlen)) return false;
        memcpy(s->logits, all_logits + (size_t)(T - 1) * V, (size_t)V * 4);
        return true;
    }
    output_head(&F, T - 1, 1);
    CU_OK(cudaMemcpyAsync(cs->h_logits, cs->logits, (size_t)V * 4, cudaMemcpyDeviceToHost, sm), err, errlen, "logits");
    if (!finish(&F, err, errlen)) return false;
    memcpy(s->logits, cs->h_logits, (size_t)V * 4);
    return true;
}

static void cu_describe(const ds4_model *m, const ds4_session *s, char *buf, size_t buflen) {
    cu_model *cm = CM(m);
    cudaDeviceProp prop;
    cudaGetDeviceProperties(&prop, 0);
    size_t fr = 0, tot = 0;
    cudaMemGetInfo(&fr, &tot);
    int n = snprintf(buf, buflen, "backend cuda (%s): weights %.2f GiB", prop.name, cm->weight_bytes / 1073741824.0);
    if (s && s->bk && n > 0 && (size_t)n < buflen)
        n += snprintf(buf + n, buflen - n, ", KV state %.3f GiB for %u tokens, scratch %.2f GiB",
                      CS(s)->state_bytes / 1073741824.0, s->n_ctx, CS(s)->scratch_bytes / 1073741824.0);
    if (n > 0 && (size_t)n < buflen)
        snprintf(buf + n, buflen - n, ", GPU memory free %.2f of %.2f GiB", fr / 1073741824.0, tot / 1073741824.0);
}

/* default prefill chunk: 4096 tokens (H200 flash-q2 43 layers, 8k prompt:
 * 4498 tok/s against 3960 at 2048 and 2969 at 1024: the routed experts get
 * ~96 tokens each; 4.3 GiB of scratch, see cu_session_init); 8192 on cards
 * with >= 32 GiB free after the weights (cu_model_init) */
static const ds4_backend cuda_backend = {
    "cuda",          cu_model_init,   cu_model_free,      cu_session_init, cu_session_free, cu_session_reset,
    cu_forward,      cu_state_to_host, cu_state_from_host, cu_describe,      4096,
};

extern "C" const ds4_backend *ds4_cuda_backend_probe(char *err, size_t errlen) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        if (err && errlen)
            snprintf(err, errlen, "no CUDA device: %s", e != cudaSuccess ? cudaGetErrorString(e) : "none found");
        cudaGetLastError();
        return NULL;
    }
    return &cuda_backend;
}

/* ------------------------------------------------------------------------ */
/* tools: info, roofline bytes, profile, device greedy loop, KV fill */

extern "C" bool ds4_cuda_info_get(const ds4_model *m, const ds4_session *s, ds4_cuda_info *out) {
    memset(out, 0, sizeof *out);
    if (!m->bk || m->backend != &cuda_backend) return false;
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) return false;
    snprintf(out->name, sizeof out->name, "%s", prop.name);
    size_t fr = 0, tot = 0;
    cudaMemGetInfo(&fr, &tot);
    out->mem_total_gib = tot / 1073741824.0;
    out->mem_free_gib = fr / 1073741824.0;
    int clk = 0, bus = 0;
    cudaDeviceGetAttribute(&clk, cudaDevAttrMemoryClockRate, 0);
    cudaDeviceGetAttribute(&bus, cudaDevAttrGlobalMemoryBusWidth, 0);
    out->peak_bw_gbs = 2.0 * clk * 1e3 * (bus / 8) / 1e9;
    out->weight_bytes = CM(m)->weight_bytes;
    if (s && s->bk) {
        out->kv_bytes = CS(s)->state_bytes;
        out->scratch_bytes = CS(s)->scratch_bytes;
    }
    return true;
}

static double dw_bytes(const dweight &w) {
    if (!w.q) return 0;
    const double rows = (double)w.n_out * (w.n_mat ? w.n_mat : 1);
    return rows * w.row_bytes + (w.d ? rows * dw_scales_per_row(w.type, w.n_in) * 2.0 : 0);
}
static double dw_mat_bytes(const dweight &w) { return w.q ? dw_bytes(w) / (w.n_mat ? w.n_mat : 1) : 0; }

extern "C" double ds4_cuda_decode_bytes(const ds4_model *m, uint64_t pos) {
    const cu_model *cm = CM(m);
    const ds4_hparams *hp = m->hp;
    double b = dw_bytes(cm->output) + dw_bytes(cm->out_hc_fn) + dw_mat_bytes(cm->tok_embd) / cm->tok_embd.n_out;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        const cu_layer &L = cm->L[il];
        b += dw_bytes(L.hc_attn_fn) + dw_bytes(L.hc_ffn_fn) + dw_bytes(L.q_a) + dw_bytes(L.q_b) + dw_bytes(L.kv) +
             dw_bytes(L.out_a) + dw_bytes(L.out_b) + dw_bytes(L.comp_kv) + dw_bytes(L.comp_gate) + dw_bytes(L.idx_q_b) +
             dw_bytes(L.idx_proj) + dw_bytes(L.idx_kv) + dw_bytes(L.idx_gate) + dw_bytes(L.router) +
             dw_bytes(L.gate_sh) + dw_bytes(L.up_sh) + dw_bytes(L.down_sh);
        b += hp->n_expert_used * (dw_mat_bytes(L.gate_exps) + dw_mat_bytes(L.up_exps) + dw_mat_bytes(L.down_exps));
        const uint32_t ratio = hp->compress_ratio[il];
        const double n_raw = pos + 1 < hp->n_swa ? pos + 1 : hp->n_swa;
        double n_comp = ratio ? (double)((pos + 1) / ratio) : 0;
        if (ratio == 4) {
            if (n_comp > hp->indexer_top_k) b += n_comp * hp->indexer_head_dim * 4.0; /* index keys scored */
            if (n_comp > hp->indexer_top_k) n_comp = hp->indexer_top_k;
        }
        b += (n_raw + n_comp) * hp->head_dim * 4.0;
    }
    return b;
}

extern "C" bool ds4_cuda_profile_decode(ds4_session *s, int32_t token, float *times_ms, char *err, size_t errlen) {
    cu_model *cm = CM(s->m);
    cu_session *cs = CS(s);
    const ds4_hparams *hp = s->m->hp;
    if (s->n_tokens + 1 > s->n_ctx) {
        snprintf(err, errlen, "context full");
        return false;
    }
    std::vector<cudaEvent_t> ev(hp->n_layer + 3);
    for (auto &e : ev) cudaEventCreate(&e);
    std::vector<prof_mark> marks;
    fwd F = {s, cm, cs, NULL, cudaSuccess, &marks};
    step_variant(&F, s->n_tokens);
    cs->h_tokens[0] = token;
    cs->h_pos0[0] = s->n_tokens;
    cudaMemcpyAsync(cs->tokens, cs->h_tokens, 4, cudaMemcpyHostToDevice, cm->st);
    cudaMemcpyAsync(cs->pos0, cs->h_pos0, 8, cudaMemcpyHostToDevice, cm->st);
    cudaEvent_t start;
    cudaEventCreate(&start);
    cudaEventRecord(start, cm->st);
    prof_mark first = {"start", start};
    marks.push_back(first);
    carveout_phase(true);
    g_in_decode = true;
    run_layers(&F, 1, ev.data());
    g_in_decode = false;
    output_head(&F, 0, 1);
    cudaEventRecord(ev[hp->n_layer + 1], cm->st);
    bool ok = finish(&F, err, errlen);
    if (ok) {
        cudaEventElapsedTime(&times_ms[0], start, ev[0]);
        for (uint32_t i = 1; i <= hp->n_layer + 1; i++) cudaEventElapsedTime(&times_ms[i], ev[i - 1], ev[i]);
        g_prof.clear();
        for (size_t i = 1; i < marks.size(); i++) {
            float ms = 0;
            cudaEventElapsedTime(&ms, marks[i - 1].ev, marks[i].ev);
            size_t k = 0;
            while (k < g_prof.size() && strcmp(g_prof[k].first, marks[i].label) != 0) k++;
            if (k == g_prof.size()) g_prof.push_back({marks[i].label, 0.0});
            g_prof[k].second += ms;
        }
    }
    for (size_t i = 1; i < marks.size(); i++) cudaEventDestroy(marks[i].ev);
    for (auto &e : ev) cudaEventDestroy(e);
    cudaEventDestroy(start);
    /* the step wrote this token's KV: make the host bookkeeping agree */
    if (ok) {
        s->tokens[s->n_tokens++] = token;
        cudaMemcpy(s->logits, cs->logits, (size_t)hp->n_vocab * 4, cudaMemcpyDeviceToHost);
        s->has_logits = true;
    }
    return ok;
}

extern "C" bool ds4_cuda_decode_greedy(ds4_session *s, int32_t first, uint32_t n, int32_t *out, char *err,
                                       size_t errlen) {
    cu_model *cm = CM(s->m);
    cu_session *cs = CS(s);
    if (!n) return true;
    if ((uint64_t)s->n_tokens + n > s->n_ctx) {
        snprintf(err, errlen, "context overflow: %u + %u tokens exceed %u", s->n_tokens, n, s->n_ctx);
        return false;
    }
    fwd F = {s, cm, cs, NULL, cudaSuccess, NULL};
    cudaStream_t sm = cm->st;
    cs->h_tokens[0] = first;
    cs->h_pos0[0] = s->n_tokens;
    CU_OK(cudaMemcpyAsync(cs->tokens, cs->h_tokens, 4, cudaMemcpyHostToDevice, sm), err, errlen, "token");
    CU_OK(cudaMemcpyAsync(cs->pos0, cs->h_pos0, 8, cudaMemcpyHostToDevice, sm), err, errlen, "position");
    int32_t *ids = NULL;
    CU_OK(cudaMalloc(&ids, (size_t)n * 4), err, errlen, "ids");
    const bool graph = cm->use_graph && !cm->sync_each;
    for (uint32_t i = 0; i < n; i++) {
        step_variant(&F, (int64_t)s->n_tokens + i);
        if (graph && !ensure_graph(&F, err, errlen)) {
            cudaFree(ids);
            return false;
        }
        if (graph) {
            carveout_phase(true);
            cudaGraphLaunch(cs->graph[graph_slot(&F)], sm);
        }
        else decode_body(&F);
        cudaMemcpyAsync(ids + i, cs->next, 4, cudaMemcpyDeviceToDevice, sm);
    }
    std::vector<int32_t> h(n);
    cudaMemcpyAsync(h.data(), ids, (size_t)n * 4, cudaMemcpyDeviceToHost, sm);
    const bool ok = finish(&F, err, errlen);
    cudaFree(ids);
    if (!ok) return false;
    s->tokens[s->n_tokens] = first;
    for (uint32_t i = 0; i + 1 < n; i++) s->tokens[s->n_tokens + 1 + i] = h[i];
    s->n_tokens += n;
    if (out) memcpy(out, h.data(), (size_t)n * 4);
    cudaMemcpy(s->logits, cs->logits, (size_t)s->m->hp->n_vocab * 4, cudaMemcpyDeviceToHost);
    s->has_logits = true;
    return true;
}

extern "C" bool ds4_cuda_fake_fill(ds4_session *s, uint32_t n, uint64_t seed, char *err, size_t errlen) {
    cu_model *cm = CM(s->m);
    cu_session *cs = CS(s);
    const ds4_hparams *hp = s->m->hp;
    if (n > s->n_ctx) {
        snprintf(err, errlen, "fill of %u tokens exceeds the context of %u", n, s->n_ctx);
        return false;
    }
    const uint32_t D = hp->head_dim, ID = hp->indexer_head_dim;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        const uint32_t ratio = hp->compress_ratio[il];
        cu_lstate *st = &cs->ls[il];
        random_f32_kernel<<<1024, 256, 0, cm->st>>>(st->raw, (uint64_t)s->raw_cap * D, 1.0f, seed + il);
        if (ratio) random_f32_kernel<<<1024, 256, 0, cm->st>>>(st->comp, (uint64_t)(n / ratio) * D, 1.0f, seed + 100 + il);
        if (ratio == 4) random_f32_kernel<<<1024, 256, 0, cm->st>>>(st->idx, (uint64_t)(n / ratio) * ID, 0.2f, seed + 200 + il);
    }
    CU_OK(cudaStreamSynchronize(cm->st), err, errlen, "KV fill");
    for (uint32_t i = s->n_tokens; i < n; i++) s->tokens[i] = 0;
    s->n_tokens = n;
    return true;
}

extern "C" const char *ds4_cuda_step_names(void) {
    return "hc pre (attention);attention input projections;kv row + compressors;"
           "q_a norm;q_b;q heads norm+rope;indexer queries;indexer scores + top-k;attention;out_a;quantize low;out_b;"
           "hc post (attention);hc pre (ffn);router;shared expert;route;experts gate/up;"
           "experts swiglu;experts down;expert sum + hc post (ffn)";
}

extern "C" bool ds4_cuda_set_skip(ds4_session *s, const char *steps) {
    g_skip_env = true;
    g_skip = steps ? steps : "";
    drop_graphs(CS(s));
    return true;
}

extern "C" void ds4_cuda_profile_breakdown(char *buf, size_t buflen) {
    if (!buflen) return;
    buf[0] = 0;
    double total = 0;
    for (auto &p : g_prof) total += p.second;
    std::vector<std::pair<const char *, double>> v = g_prof;
    for (size_t i = 0; i < v.size(); i++)
        for (size_t j = i + 1; j < v.size(); j++)
            if (v[j].second > v[i].second) std::swap(v[i], v[j]);
    size_t n = 0;
    for (auto &p : v) {
        int k = snprintf(buf + n, buflen - n, "%s%s %.3f ms (%.0f%%)", n ? ", " : "", p.first, p.second,
                         total > 0 ? 100 * p.second / total : 0);
        if (k < 0 || (size_t)k >= buflen - n) break;
        n += (size_t)k;
    }
}
