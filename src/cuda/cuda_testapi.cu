/* cuda_testapi.cu - host-in/host-out wrappers of each kernel family, for the
 * op-by-op tests against the CPU (tests/cuda/test_cuda_ops.c). Each call
 * uploads its inputs, runs the kernels the forward pass runs, and copies the
 * outputs back; device memory is freed before returning. Outputs are
 * poisoned (NaN) before the kernels run so an unwritten element fails.
 */
#include <string.h>

#include <type_traits>
#include <vector>

#include "cuda_internal.cuh"
#include "ds4_cuda.h"

namespace {

struct scope : cu_alloc {
    char *err;
    size_t errlen;
    bool ok = true;
    scope(char *e, size_t el) : err(e), errlen(el) {
        st = 0;
        weight_bytes = 0;
        if (cudaStreamCreate(&st) != cudaSuccess) fail("stream");
        char why[256];
        if (ok && (!cu_tables_init(why, sizeof why) || !cu_attn_init(why, sizeof why))) fail(why);
    }
    ~scope() {
        if (st) cudaStreamSynchronize(st);
        for (void *p : allocs) cudaFree(p);
        if (st) cudaStreamDestroy(st);
    }
    void fail(const char *what) {
        if (ok && err && errlen) snprintf(err, errlen, "%s", what);
        ok = false;
    }
    template <typename T> T *dev(size_t n, const T *host = nullptr) {
        void *p = nullptr;
        if (!ok) return nullptr;
        if (!cu_dev_alloc(this, &p, n * sizeof(T) + 16, err, errlen, "test buffer")) {
            ok = false;
            return nullptr;
        }
        if (host) {
            if (cudaMemcpy(p, host, n * sizeof(T), cudaMemcpyHostToDevice) != cudaSuccess) fail("upload");
        } else {
            cudaMemsetAsync(p, 0xff, n * sizeof(T) + 16, st); /* NaN poison for floats */
        }
        return (T *)p;
    }
    template <typename T> void get(T *host, const T *d, size_t n) {
        if (!ok) return;
        cudaError_t e = cudaStreamSynchronize(st);
        if (e == cudaSuccess) e = cudaGetLastError();
        if (e != cudaSuccess) {
            char m[256];
            snprintf(m, sizeof m, "kernel failed: %s", cudaGetErrorString(e));
            fail(m);
            return;
        }
        if (cudaMemcpy(host, d, n * sizeof(T), cudaMemcpyDeviceToHost) != cudaSuccess) fail("download");
    }
    bool weight(const ds4_weight *w, dweight *out) {
        if (!ok) return false;
        uint8_t *staging = dev<uint8_t>(64u << 20);
        if (!ok) return false;
        if (!cu_weight_upload(this, w, out, 1, staging, 64u << 20, nullptr, 0, err, errlen)) ok = false;
        cudaStreamSynchronize(st);
        return ok;
    }
    dact act(uint32_t rows, uint32_t n, const float *host) {
        dact a;
        memset(&a, 0, sizeof a);
        a.n = n;
        a.rows = rows;
        a.f = dev<float>((size_t)rows * n, host);
        if (n % 32 == 0) {
            a.q8 = dev<int8_t>((size_t)rows * n);
            a.d8 = dev<float>((size_t)rows * n / 32);
        }
        if (n % 256 == 0) {
            a.qk = dev<int8_t>((size_t)rows * n);
            a.dk = dev<float>((size_t)rows * n / 256);
            a.bk = dev<int32_t>((size_t)rows * n / 16);
        }
        if (ok && host) cu_quantize(st, a.f, n, rows, a);
        return a;
    }
};

} // namespace

extern "C" void ds4_cuda_test_set_mma(unsigned min_T) { cu_mma_set_min_T(min_T); }
static bool g_exact_jobs = false;
extern "C" void ds4_cuda_test_set_exact_jobs(bool on) { g_exact_jobs = on; }
extern "C" void ds4_cuda_test_set_mma_moe_bn(unsigned bn) { cu_mma_set_moe_bn(bn); }

extern "C" bool ds4_cuda_test_matmul(const ds4_weight *w, uint64_t mat, uint64_t row0, uint64_t n_rows, const float *x,
                                     int T, float *y, char *err, size_t errlen) {
    scope S(err, errlen);
    dweight dw;
    if (!S.weight(w, &dw)) return false;
    dact a = S.act((uint32_t)T, (uint32_t)w->n_in, x);
    float *dy = S.dev<float>((size_t)T * n_rows);
    if (!S.ok) return false;
    mv_job j;
    memset(&j, 0, sizeof j);
    j.w = dw;
    j.mat = (uint32_t)mat;
    j.n_pairs = 1;
    j.row0 = (uint32_t)row0;
    j.n_rows = (uint32_t)n_rows;
    j.x = av_of(a);
    j.y = dy;
    j.y_stride = (uint32_t)n_rows;
    j.exact = g_exact_jobs;
    cu_matvec(S.st, &j, 1, (uint32_t)T);
    S.get(y, dy, (size_t)T * n_rows);
    return S.ok;
}

/* the decode router kernel: y[n_out] = W x for one token (F16/BF16 W) */
extern "C" bool ds4_cuda_test_router(const ds4_weight *w, const float *x, float *y, char *err, size_t errlen) {
    scope S(err, errlen);
    dweight dw;
    if (!S.weight(w, &dw)) return false;
    dact a = S.act(1, (uint32_t)w->n_in, x);
    float *dy = S.dev<float>(w->n_out);
    if (!S.ok) return false;
    if (!cu_router_decode_ok(dw, av_of(a))) return S.fail("router kernel does not apply"), false;
    cu_router_decode(S.st, dw, av_of(a), dy);
    S.get(y, dy, w->n_out);
    return S.ok;
}

/* the decode router with the routing in its last block, launched twice (the
 * block count resets itself), against route_kernel on its logits:
 * ids/wts_in [2][K] (both launches), ids/wts_sep [K]; bias and hash
 * (tid2eid [n_tok][K], token) may be NULL / unused */
extern "C" bool ds4_cuda_test_router_route(const ds4_weight *w, const float *x, uint32_t K, const float *bias,
                                           const int32_t *tid2eid, uint32_t n_tok, int32_t token, bool norm,
                                           float scale, int32_t *ids_in, float *wts_in, int32_t *ids_sep,
                                           float *wts_sep, char *err, size_t errlen) {
    scope S(err, errlen);
    dweight dw;
    if (!S.weight(w, &dw)) return false;
    const uint32_t X = (uint32_t)w->n_out;
    dact a = S.act(1, (uint32_t)w->n_in, x);
    float *dy = S.dev<float>(X), *db = bias ? S.dev<float>(X, bias) : nullptr;
    int32_t *dt = tid2eid ? S.dev<int32_t>((size_t)n_tok * K, tid2eid) : nullptr, *dtok = S.dev<int32_t>(1, &token);
    int32_t *di = S.dev<int32_t>(2 * K), *di2 = S.dev<int32_t>(K);
    float *dwt = S.dev<float>(2 * K), *dwt2 = S.dev<float>(K);
    if (!S.ok) return false;
    if (!cu_router_decode_ok(dw, av_of(a))) return S.fail("router kernel does not apply"), false;
    for (int rep = 0; rep < 2; rep++) {
        const route_args ra = {K, dtok, dt, db, norm, scale, di + rep * K, dwt + rep * K};
        cu_router_decode(S.st, dw, av_of(a), dy, &ra);
    }
    const route_args sep = {K, dtok, dt, db, norm, scale, di2, dwt2};
    cu_route(S.st, dy, 1, X, sep);
    S.get(ids_in, di, 2 * K);
    S.get(wts_in, dwt, 2 * K);
    S.get(ids_sep, di2, K);
    S.get(wts_sep, dwt2, K);
    return S.ok;
}

/* G jobs in one call, as the attention's out_a groups: job g = rows
 * [g R, g R + R) of matrix mat against columns [g n_in, g n_in + n_in) of x
 * (T rows of G n_in) -> y[t][g R + r] (rows of G R) */
extern "C" bool ds4_cuda_test_matmul_groups(const ds4_weight *w, uint64_t mat, uint32_t G, uint32_t R, const float *x,
                                            int T, float *y, char *err, size_t errlen) {
    scope S(err, errlen);
    dweight dw;
    if (!S.weight(w, &dw)) return false;
    const uint32_t n = (uint32_t)w->n_in;
    dact a = S.act((uint32_t)T, G * n, x);
    float *dy = S.dev<float>((size_t)T * G * R);
    if (!S.ok) return false;
    mv_job j[MV_MAX_JOBS];
    if (G > MV_MAX_JOBS) return S.fail("too many groups"), false;
    memset(j, 0, sizeof j);
    for (uint32_t g = 0; g < G; g++) {
        j[g].w = dw;
        j[g].mat = (uint32_t)mat;
        j[g].n_pairs = 1;
        j[g].row0 = g * R;
        j[g].n_rows = R;
        j[g].x = av_of(a, g * n);
        j[g].y = dy + (size_t)g * R;
        j[g].y_stride = G * R;
    }
    cu_matvec(S.st, j, (int)G, (uint32_t)T);
    S.get(y, dy, (size_t)T * G * R);
    return S.ok;
}

/* One decode launch of two jobs: expert pairs (matrix ids[p], activation
 * row p or row 0 when x_shared) -> y [n_pairs][n_out], and a dense job over
 * rows [3, n_out) of the last matrix with activation row 0 -> y2. */
extern "C" bool ds4_cuda_test_matvec_pairs(const ds4_weight *w, const int32_t *ids, uint32_t n_pairs, const float *x,
                                           bool x_shared, float *y, float *y2, char *err, size_t errlen) {
    scope S(err, errlen);
    dweight dw;
    if (!S.weight(w, &dw)) return false;
    const uint32_t nx = x_shared ? 1 : n_pairs, n_out = (uint32_t)w->n_out;
    dact a = S.act(nx, (uint32_t)w->n_in, x);
    int32_t *did = S.dev<int32_t>(n_pairs, ids);
    float *dy = S.dev<float>((size_t)n_pairs * n_out), *dy2 = S.dev<float>(n_out);
    if (!S.ok) return false;
    mv_job j[2];
    memset(j, 0, sizeof j);
    j[0].w = dw;
    j[0].mat_ids = did;
    j[0].n_pairs = n_pairs;
    j[0].x_early = 1; /* (uploaded before the launch: the decode experts' early activation load) */
    j[0].x_pair = x_shared ? 0 : 1;
    j[0].y_pair = 1;
    j[0].n_rows = n_out;
    j[0].x = av_of(a);
    j[0].y = dy;
    j[0].y_stride = n_out;
    j[1].w = dw;
    j[1].mat = (uint32_t)w->n_mat - 1;
    j[1].n_pairs = 1;
    j[1].row0 = 3;
    j[1].n_rows = n_out - 3;
    j[1].x = av_of(a);
    j[1].y = dy2;
    j[1].y_stride = n_out - 3;
    cu_matvec(S.st, j, 2, 1);
    S.get(y, dy, (size_t)n_pairs * n_out);
    S.get(y2, dy2, n_out - 3);
    return S.ok;
}

/* elements (floats, quants, scales, block sums) in which two activations
 * of the same shape differ */
static long forms_diff(scope &S, const dact &a, const dact &b) {
    const size_t n = (size_t)a.rows * a.n;
    long diff = 0;
    auto cmp = [&](auto *x, auto *y, size_t m) {
        using T = std::remove_const_t<std::remove_pointer_t<decltype(x)>>;
        std::vector<T> hx(m), hy(m);
        S.get(hx.data(), x, m), S.get(hy.data(), y, m);
        for (size_t i = 0; i < m; i++) diff += memcmp(&hx[i], &hy[i], sizeof(T)) != 0;
    };
    if (a.f && b.f) cmp(a.f, b.f, n);
    if (a.q8) cmp(a.q8, b.q8, n), cmp(a.d8, b.d8, n / 32);
    if (a.qk) cmp(a.qk, b.qk, n), cmp(a.dk, b.dk, n / 256), cmp(a.bk, b.bk, n / 16);
    return S.ok ? diff : -1;
}

/* A decode launch whose last blocks form the next product's activation
 * (mv_job.fin) against the plain launch followed by the launch it replaces;
 * *diff: elements of the activation's float, Q8_0 and Q8_K forms that
 * differ, y: the product (also compared: counted in *diff).
 * MV_FIN_NORM: y = W x [n_out], then RMSNorm with aux [n_out] (eps);
 * MV_FIN_SWIGLU: gate = W, up = W2, pairs with matrices ids[p] on the one
 * row x, then the SwiGLU with route weights aux [n_pairs] (clamp eps);
 * MV_FIN_QUANT: W's rows in n_groups jobs of n_out / n_groups rows, each
 * quantizing its slice. */
extern "C" bool ds4_cuda_test_matvec_fin(const ds4_weight *w, const ds4_weight *w2, int mode, const int32_t *ids,
                                         uint32_t n_pairs, uint32_t n_groups, const float *x, const float *aux,
                                         float eps, float *y, long *diff, char *err, size_t errlen) {
    scope S(err, errlen);
    dweight dw, du;
    if (!S.weight(w, &dw)) return false;
    if (mode == MV_FIN_SWIGLU && !S.weight(w2, &du)) return false;
    const uint32_t n = (uint32_t)w->n_out, P = mode == MV_FIN_SWIGLU ? n_pairs : 1;
    const uint32_t G = mode == MV_FIN_QUANT ? n_groups : 1, R = n / G;
    dact a = S.act(1, (uint32_t)w->n_in, x);
    float *daux = aux ? S.dev<float>(mode == MV_FIN_SWIGLU ? n_pairs : n, aux) : nullptr;
    int32_t *did = ids ? S.dev<int32_t>(n_pairs, ids) : nullptr;
    uint32_t *cnt = S.dev<uint32_t>(64);
    float *yg[2], *yg2[2];
    for (int k = 0; k < 2; k++) yg[k] = S.dev<float>((size_t)P * n), yg2[k] = S.dev<float>((size_t)P * n);
    dact o = S.act(P, n, nullptr), o2 = S.act(P, n, nullptr);
    if (!S.ok) return false;
    cudaMemsetAsync(cnt, 0, 64 * 4, S.st);
    mv_job j[MV_MAX_JOBS];
    int nj = 0;
    auto make = [&](const dweight &wt, float *yy, uint32_t row0, uint32_t rows) {
        mv_job b;
        memset(&b, 0, sizeof b);
        b.w = wt;
        b.mat_ids = did;
        b.n_pairs = P;
        b.y_pair = 1;
        b.row0 = row0;
        b.n_rows = rows;
        b.x = av_of(a);
        b.y = yy;
        b.y_stride = rows;
        return b;
    };
    if (mode == MV_FIN_SWIGLU) {
        j[nj++] = make(dw, yg[0], 0, n);
        j[nj++] = make(du, yg[1], 0, n);
    } else {
        for (uint32_t g = 0; g < G; g++) j[nj++] = make(dw, yg[0] + g * R, g * R, R);
    }
    /* the plain launch, then the separate one */
    mv_job p[MV_MAX_JOBS];
    for (int k = 0; k < nj; k++) {
        p[k] = j[k];
        p[k].y = mode == MV_FIN_SWIGLU ? yg2[k] : yg2[0] + (j[k].y - yg[0]);
    }
    cu_matvec(S.st, p, nj, 1);
    if (mode == MV_FIN_NORM) cu_rmsnorm(S.st, yg2[0], o2, daux, 1, n, eps);
    else if (mode == MV_FIN_SWIGLU) cu_swiglu(S.st, yg2[0], yg2[1], daux, P, n, eps, o2);
    else cu_quantize(S.st, yg2[0], n, 1, o2);
    /* the finishing launch, twice (the counters must reset themselves) */
    for (int k = 0; k < nj; k++) {
        mv_job &b = j[k];
        b.fin = mode;
        b.fin_count = cnt + (mode == MV_FIN_QUANT ? k : 0);
        b.fin_n = mode == MV_FIN_QUANT ? R : n;
        b.fin_x = mode == MV_FIN_SWIGLU ? yg[0] : b.y;
        b.fin_u = mode == MV_FIN_SWIGLU ? yg[1] : nullptr;
        b.fin_pstride = mode == MV_FIN_SWIGLU ? n : 0;
        b.fin_w = daux;
        b.fin_eps = eps;
        b.fin_out = o;
        if (mode == MV_FIN_QUANT) b.fin_out.f = nullptr; /* (the rows are the floats: cu_quantize writes none) */
        b.fin_c0 = mode == MV_FIN_QUANT ? k * R : 0;
        if (!cu_matvec_fin_ok(b)) return S.fail("finishing job does not apply"), false;
    }
    for (int rep = 0; rep < 2; rep++) {
        if (rep) cudaMemsetAsync(o.q8, 0, (size_t)P * n, S.st), cudaMemsetAsync(o.qk, 0, (size_t)P * n, S.st);
        cu_matvec(S.st, j, nj, 1);
    }
    std::vector<uint32_t> hc(64);
    S.get(hc.data(), cnt, 64);
    dact oc = o;
    if (mode == MV_FIN_QUANT) oc.f = nullptr;
    long d = forms_diff(S, oc, o2);
    for (int k = 0; k < (mode == MV_FIN_SWIGLU ? 2 : 1); k++) {
        std::vector<float> a1((size_t)P * n), a2((size_t)P * n);
        S.get(a1.data(), yg[k], a1.size()), S.get(a2.data(), yg2[k], a2.size());
        for (size_t i = 0; i < a1.size(); i++) d += memcmp(&a1[i], &a2[i], 4) != 0;
    }
    for (uint32_t c : hc) d += c != 0; /* counters back at zero */
    S.get(y, yg[0], (size_t)P * n);
    *diff = d;
    return S.ok;
}

extern "C" bool ds4_cuda_test_moe_mm(const ds4_weight *w, const int32_t *ids, uint32_t n_pairs, const float *x,
                                     uint32_t x_div, float *y, char *err, size_t errlen) {
    scope S(err, errlen);
    dweight dw;
    if (!S.weight(w, &dw)) return false;
    const uint32_t n_x = (n_pairs + x_div - 1) / x_div;
    dact a = S.act(n_x, (uint32_t)w->n_in, x);
    int32_t *did = S.dev<int32_t>(n_pairs, ids);
    int32_t *cnt = S.dev<int32_t>(w->n_mat), *off = S.dev<int32_t>(w->n_mat), *list = S.dev<int32_t>(n_pairs);
    float *dy = S.dev<float>((size_t)n_pairs * w->n_out);
    if (!S.ok) return false;
    cu_moe_sort(S.st, did, n_pairs, (uint32_t)w->n_mat, cnt, off, list);
    cu_moe_mm(S.st, dw, (uint32_t)w->n_mat, cnt, off, list, av_of(a), x_div, dy, (uint32_t)w->n_out, n_pairs);
    S.get(y, dy, (size_t)n_pairs * w->n_out);
    return S.ok;
}

/* routed gate + up + SwiGLU in one tensor-core launch (cu_mma_moe_swiglu):
 * h[p] = silu(min(gate[ids[p]] x, c)) clamp(up[ids[p]] x, c) wts[p], the
 * activation row of pair p being p / x_div */
extern "C" bool ds4_cuda_test_moe_swiglu(const ds4_weight *gate, const ds4_weight *up, const int32_t *ids,
                                         uint32_t n_pairs, const float *x, uint32_t x_div, const float *wts, float clamp,
                                         float *h, float *h_sep, char *err, size_t errlen) {
    scope S(err, errlen);
    dweight dg, du;
    if (!S.weight(gate, &dg) || !S.weight(up, &du)) return false;
    const uint32_t n_x = (n_pairs + x_div - 1) / x_div, F = (uint32_t)gate->n_out;
    dact a = S.act(n_x, (uint32_t)gate->n_in, x);
    int32_t *did = S.dev<int32_t>(n_pairs, ids);
    int32_t *cnt = S.dev<int32_t>(gate->n_mat), *off = S.dev<int32_t>(gate->n_mat), *list = S.dev<int32_t>(n_pairs);
    float *dw = S.dev<float>(n_pairs, wts), *dh = S.dev<float>((size_t)n_pairs * F);
    float *dg_ = S.dev<float>((size_t)n_pairs * F), *du_ = S.dev<float>((size_t)n_pairs * F);
    dact hs = S.act(n_pairs, F, nullptr);
    if (!S.ok) return false;
    cu_moe_sort(S.st, did, n_pairs, (uint32_t)gate->n_mat, cnt, off, list);
    if (!cu_mma_moe_swiglu(S.st, dg, du, (uint32_t)gate->n_mat, cnt, off, list, av_of(a), x_div, dw, clamp, dh, F,
                           n_pairs))
        return S.fail("the fused gate/up/SwiGLU product does not apply"), false;
    /* the separate launches: gate, up (tensor cores), swiglu_kernel */
    cu_moe_mm(S.st, dg, (uint32_t)gate->n_mat, cnt, off, list, av_of(a), x_div, dg_, F, n_pairs);
    cu_moe_mm(S.st, du, (uint32_t)gate->n_mat, cnt, off, list, av_of(a), x_div, du_, F, n_pairs);
    cu_swiglu(S.st, dg_, du_, dw, n_pairs, F, clamp, hs);
    S.get(h, dh, (size_t)n_pairs * F);
    S.get(h_sep, hs.f, (size_t)n_pairs * F);
    return S.ok;
}

extern "C" bool ds4_cuda_test_quantize(ds4_dtype type, const float *x, int rows, int n, void *out, char *err,
                                       size_t errlen) {
    scope S(err, errlen);
    dact a = S.act((uint32_t)rows, (uint32_t)n, x);
    if (!S.ok) return false;
    if (type == DS4_TYPE_Q8_0) {
        if (!a.q8) return S.fail("n % 32"), false;
        std::vector<int8_t> q((size_t)rows * n);
        std::vector<float> d((size_t)rows * n / 32);
        S.get(q.data(), a.q8, q.size());
        S.get(d.data(), a.d8, d.size());
        ds4_block_q8_0 *b = (ds4_block_q8_0 *)out;
        for (size_t i = 0; i < d.size(); i++) {
            const __half h = __float2half_rn(d[i]);
            b[i].d = __half_as_ushort(h);
            memcpy(b[i].qs, &q[i * 32], 32);
        }
    } else {
        if (!a.qk) return S.fail("n % 256"), false;
        std::vector<int8_t> q((size_t)rows * n);
        std::vector<float> d((size_t)rows * n / 256);
        std::vector<int32_t> bs((size_t)rows * n / 16);
        S.get(q.data(), a.qk, q.size());
        S.get(d.data(), a.dk, d.size());
        S.get(bs.data(), a.bk, bs.size());
        ds4_block_q8_k *b = (ds4_block_q8_k *)out;
        for (size_t i = 0; i < d.size(); i++) {
            b[i].d = d[i];
            memcpy(b[i].qs, &q[i * 256], 256);
            for (int g = 0; g < 16; g++) b[i].bsums[g] = (int16_t)bs[i * 16 + g];
        }
    }
    return S.ok;
}

extern "C" bool ds4_cuda_test_hc_pre(const ds4_weight *fn, const float *scale, const float *base, const float *R,
                                     uint32_t T, uint32_t C, uint32_t E, uint32_t iters, float rms_eps, float hc_eps,
                                     const float *norm, float *pre, float *post, float *comb, float *out, char *err,
                                     size_t errlen) {
    scope S(err, errlen);
    dweight dw;
    if (!S.weight(fn, &dw)) return false;
    const uint32_t M = (2 + C) * C;
    float *dR = S.dev<float>((size_t)T * C * E, R), *dmix = S.dev<float>(cu_hc_part_floats(T, M, C, E));
    float *dsc = S.dev<float>(3, scale), *dbase = S.dev<float>(M, base), *dnorm = S.dev<float>(E, norm);
    float *dpre = S.dev<float>(T * C), *dpost = S.dev<float>(T * C), *dcomb = S.dev<float>(T * C * C);
    dact dout = S.act(T, E, nullptr);
    if (!S.ok) return false;
    cu_hc_mix(S.st, dw, dR, T, C * E, rms_eps, dmix);
    hc_params hp = {dsc, dbase, C, iters, hc_eps};
    cu_hc_pre(S.st, hp, dmix, dR, T, E, dnorm, rms_eps, dpre, dpost, dcomb, dout);
    S.get(pre, dpre, T * C);
    S.get(post, dpost, T * C);
    S.get(comb, dcomb, T * C * C);
    S.get(out, dout.f, (size_t)T * E);
    return S.ok;
}

extern "C" bool ds4_cuda_test_hc_post(float *R, const float *y, const float *post, const float *comb, uint32_t T,
                                      uint32_t C, uint32_t E, char *err, size_t errlen) {
    scope S(err, errlen);
    float *dR = S.dev<float>((size_t)T * C * E, R), *dy = S.dev<float>((size_t)T * E, y);
    float *dpost = S.dev<float>(T * C, post), *dcomb = S.dev<float>(T * C * C, comb);
    if (!S.ok) return false;
    cu_hc_post(S.st, dR, dy, dpost, dcomb, T, C, E);
    S.get(R, dR, (size_t)T * C * E);
    return S.ok;
}

extern "C" bool ds4_cuda_test_head_post(float *x, uint32_t T, uint32_t H, uint32_t D, uint32_t n_rot,
                                        const float *inv_freq, int64_t pos0, bool norm, bool inverse, bool hadamard_fp4,
                                        char *err, size_t errlen) {
    scope S(err, errlen);
    float *dx = S.dev<float>((size_t)T * H * D, x), *df = S.dev<float>(n_rot / 2, inv_freq);
    int64_t *dp = S.dev<int64_t>(1, &pos0);
    if (!S.ok) return false;
    cu_head_post(S.st, dx, T, H, D, n_rot, df, dp, norm, 1e-6f, inverse, hadamard_fp4,
                 T == 1 && cu_wide_angles(pos0)); /* (what a decode step there runs) */
    S.get(x, dx, (size_t)T * H * D);
    return S.ok;
}

extern "C" bool ds4_cuda_test_kv_store(const float *kv, uint32_t T, uint32_t D, const float *norm, uint32_t n_rot,
                                       const float *inv_freq, int64_t pos0, bool fp8, bool f16, float *raw,
                                       uint32_t raw_cap, char *err, size_t errlen) {
    scope S(err, errlen);
    float *dkv = S.dev<float>((size_t)T * D, kv), *dn = S.dev<float>(D, norm), *df = S.dev<float>(n_rot / 2, inv_freq);
    float *draw = S.dev<float>((size_t)raw_cap * D, raw);
    int64_t *dp = S.dev<int64_t>(1, &pos0);
    if (!S.ok) return false;
    const kvrow_params kp = {D, dn, 1e-6f, n_rot, df, fp8, f16, draw, raw_cap};
    cu_kv_store(S.st, kp, dkv, T, dp);
    S.get(raw, draw, (size_t)raw_cap * D);
    return S.ok;
}

extern "C" bool ds4_cuda_test_route(const float *logits, uint32_t T, uint32_t X, uint32_t K, const int32_t *tokens,
                                    const int32_t *tid2eid, uint32_t vocab, const float *bias, bool norm, float scale,
                                    int32_t *ids, float *wts, char *err, size_t errlen) {
    scope S(err, errlen);
    float *dl = S.dev<float>((size_t)T * X, logits), *db = bias ? S.dev<float>(X, bias) : nullptr;
    int32_t *dt = S.dev<int32_t>(T, tokens), *dtab = tid2eid ? S.dev<int32_t>((size_t)K * vocab, tid2eid) : nullptr;
    int32_t *di = S.dev<int32_t>((size_t)T * K);
    float *dw = S.dev<float>((size_t)T * K);
    if (!S.ok) return false;
    const route_args ra = {K, dt, dtab, db, norm, scale, di, dw};
    cu_route(S.st, dl, T, X, ra);
    S.get(ids, di, (size_t)T * K);
    S.get(wts, dw, (size_t)T * K);
    return S.ok;
}

extern "C" bool ds4_cuda_test_moe_sum(const float *ysh, const float *ye, const int32_t *ids, uint32_t T, uint32_t K,
                                      uint32_t E, float *y, char *err, size_t errlen) {
    scope S(err, errlen);
    float *dsh = S.dev<float>((size_t)T * E, ysh), *dye = S.dev<float>((size_t)T * K * E, ye);
    int32_t *di = S.dev<int32_t>((size_t)T * K, ids);
    float *dy = S.dev<float>((size_t)T * E);
    if (!S.ok) return false;
    cu_moe_sum(S.st, dsh, dye, di, T, K, E, dy);
    S.get(y, dy, (size_t)T * E);
    return S.ok;
}

/* values of a's quantized forms (Q8_0 values and scales, Q8_K values,
 * scales and sums) that differ from quantize_kernel's of a.f */
static long quant_diff(scope &S, const dact &a) {
    const size_t n = (size_t)a.rows * a.n;
    dact r = S.act(a.rows, a.n, nullptr);
    if (!S.ok) return -1;
    cu_quantize(S.st, a.f, a.n, a.rows, r);
    long diff = 0;
    if (a.q8) {
        std::vector<int8_t> x(n), y(n);
        std::vector<float> dx(n / 32), dy(n / 32);
        S.get(x.data(), a.q8, n), S.get(y.data(), r.q8, n), S.get(dx.data(), a.d8, n / 32), S.get(dy.data(), r.d8, n / 32);
        for (size_t i = 0; i < n; i++) diff += x[i] != y[i];
        for (size_t i = 0; i < n / 32; i++) diff += dx[i] != dy[i];
    }
    if (a.qk) {
        std::vector<int8_t> x(n), y(n);
        std::vector<float> dx(n / 256), dy(n / 256);
        std::vector<int32_t> bx(n / 16), by(n / 16);
        S.get(x.data(), a.qk, n), S.get(y.data(), r.qk, n), S.get(dx.data(), a.dk, n / 256), S.get(dy.data(), r.dk, n / 256);
        S.get(bx.data(), a.bk, n / 16), S.get(by.data(), r.bk, n / 16);
        for (size_t i = 0; i < n; i++) diff += x[i] != y[i];
        for (size_t i = 0; i < n / 256; i++) diff += dx[i] != dy[i];
        for (size_t i = 0; i < n / 16; i++) diff += bx[i] != by[i];
    }
    return S.ok ? diff : -1;
}

extern "C" bool ds4_cuda_test_swiglu(const float *g, const float *u, const float *w, uint32_t rows, uint32_t F, float c,
                                     float *h, long *qdiff, char *err, size_t errlen) {
    scope S(err, errlen);
    float *dg = S.dev<float>((size_t)rows * F, g), *du = S.dev<float>((size_t)rows * F, u);
    float *dw = w ? S.dev<float>(rows, w) : nullptr;
    dact dh = S.act(rows, F, nullptr);
    if (!S.ok) return false;
    cu_swiglu(S.st, dg, du, dw, rows, F, c, dh);
    S.get(h, dh.f, (size_t)rows * F);
    if (qdiff) *qdiff = quant_diff(S, dh);
    return S.ok;
}

extern "C" bool ds4_cuda_test_rmsnorm(const float *x, uint32_t rows, uint32_t n, const float *w, float eps, float *out,
                                      long *qdiff, char *err, size_t errlen) {
    scope S(err, errlen);
    float *dx = S.dev<float>((size_t)rows * n, x), *dw = w ? S.dev<float>(n, w) : nullptr;
    dact d = S.act(rows, n, nullptr);
    if (!S.ok) return false;
    cu_rmsnorm(S.st, dx, d, dw, rows, n, eps);
    S.get(out, d.f, (size_t)rows * n);
    if (qdiff) *qdiff = quant_diff(S, d);
    return S.ok;
}

extern "C" bool ds4_cuda_test_compress(uint32_t ratio, uint32_t dim, uint32_t n_rot, const float *inv_freq,
                                       const float *norm, bool indexer, bool sim, bool f16, const ds4_weight *ape,
                                       const float *kv, const float *sc, uint32_t T, int64_t pos0, float *st_kv,
                                       float *st_sc, float *rows, uint32_t comp_cap, char *err, size_t errlen) {
    scope S(err, errlen);
    dweight da;
    if (!S.weight(ape, &da)) return false;
    const uint32_t c = ratio == 4 ? 2 : 1, W = c * dim;
    const size_t sn = (size_t)c * ratio * W;
    float *dkv = S.dev<float>((size_t)T * W, kv), *dsc = S.dev<float>((size_t)T * W, sc);
    float *dskv = S.dev<float>(sn, st_kv), *dssc = S.dev<float>(sn, st_sc);
    float *drows = S.dev<float>((size_t)comp_cap * dim, rows), *dpool = S.dev<float>((size_t)(T / ratio + 2) * dim);
    float *df = S.dev<float>(n_rot / 2, inv_freq), *dn = S.dev<float>(dim, norm);
    int64_t *dp = S.dev<int64_t>(1, &pos0);
    if (!S.ok) return false;
    const comp_job J = {{ratio, dim, n_rot, df, dn, indexer, sim, f16, 1e-6f}, da, dkv, dsc, dskv, dssc, dpool, drows};
    cu_compress(S.st, J, T, dp);
    S.get(st_kv, dskv, sn);
    S.get(st_sc, dssc, sn);
    S.get(rows, drows, (size_t)comp_cap * dim);
    return S.ok;
}

/* state of ds4_cuda_test_side_decode: raw ring [raw_cap][D]; attention
 * compressor kv and score states [c ratio][c D] (c = 2 for ratio 4) and rows
 * [comp_cap][D]; indexer (ratio 4) states [8][2 ID] and rows [comp_cap][ID] */
static size_t side_sizes(uint32_t D, uint32_t ID, uint32_t ratio, uint32_t raw_cap, uint32_t comp_cap, size_t sz[7]) {
    const uint32_t c = ratio == 4 ? 2 : 1;
    sz[0] = (size_t)raw_cap * D;
    sz[1] = sz[2] = ratio ? (size_t)c * ratio * c * D : 0;
    sz[3] = ratio ? (size_t)comp_cap * D : 0;
    sz[4] = sz[5] = ratio == 4 ? (size_t)8 * 2 * ID : 0;
    sz[6] = ratio == 4 ? (size_t)comp_cap * ID : 0;
    size_t n = 0;
    for (int i = 0; i < 7; i++) n += sz[i];
    return n;
}

extern "C" size_t ds4_cuda_test_side_state_floats(uint32_t D, uint32_t ID, uint32_t ratio, uint32_t raw_cap,
                                                  uint32_t comp_cap) {
    size_t sz[7];
    return side_sizes(D, ID, ratio, raw_cap, comp_cap, sz);
}

extern "C" bool ds4_cuda_test_side_decode(uint32_t D, uint32_t ID, uint32_t ratio, uint32_t n_rot,
                                          const float *inv_freq, const float *norms, const ds4_weight *ape,
                                          const ds4_weight *idx_ape, const float *kv, const float *ckv,
                                          const float *csc, const float *ikv, const float *isc, int64_t pos0,
                                          uint32_t raw_cap, uint32_t comp_cap, float *state_fused, float *state_sep,
                                          char *err, size_t errlen) {
    scope S(err, errlen);
    dweight da, di;
    memset(&da, 0, sizeof da);
    memset(&di, 0, sizeof di);
    if (ratio && !S.weight(ape, &da)) return false;
    if (ratio == 4 && !S.weight(idx_ape, &di)) return false;
    const uint32_t W = (ratio == 4 ? 2 : 1) * D;
    size_t sz[7];
    const size_t n = side_sizes(D, ID, ratio, raw_cap, comp_cap, sz);
    float *dkv = S.dev<float>(D, kv), *dckv = S.dev<float>(W, ckv), *dcsc = S.dev<float>(W, csc);
    float *dikv = S.dev<float>(2 * ID, ikv), *disc = S.dev<float>(2 * ID, isc);
    float *df = S.dev<float>(n_rot / 2, inv_freq), *dn = S.dev<float>(D * 2 + ID, norms);
    float *dpool = S.dev<float>(2 * D), *dipool = S.dev<float>(2 * ID);
    int64_t *dp = S.dev<int64_t>(1, &pos0);
    float *st[2] = {S.dev<float>(n, state_fused), S.dev<float>(n, state_sep)};
    if (!S.ok) return false;
    for (int way = 0; way < 2; way++) {
        float *p[7];
        p[0] = st[way];
        for (int i = 1; i < 7; i++) p[i] = p[i - 1] + sz[i - 1];
        const kvrow_params kp = {D, dn, 1e-6f, n_rot, df, true, true, p[0], raw_cap};
        const comp_job ca = {{ratio, D, n_rot, df, dn + D, false, true, true, 1e-6f}, da, dckv, dcsc, p[1], p[2], dpool, p[3]};
        const comp_job ci = {{4, ID, n_rot, df, dn + 2 * D, true, true, false, 1e-6f}, di, dikv, disc, p[4], p[5], dipool, p[6]};
        if (way == 0) {
            cu_side_decode(S.st, kp, dkv, ratio ? &ca : NULL, ratio == 4 ? &ci : NULL, dp, cu_wide_angles(pos0));
        } else {
            cu_kv_store(S.st, kp, dkv, 1, dp);
            if (ratio) cu_compress(S.st, ca, 1, dp);
            if (ratio == 4) cu_compress(S.st, ci, 1, dp);
        }
    }
    S.get(state_fused, st[0], n);
    S.get(state_sep, st[1], n);
    return S.ok;
}

extern "C" bool ds4_cuda_test_indexer(const float *qi, const float *wi, float wscale, const float *keys,
                                      uint32_t n_keys, uint32_t T, uint32_t I, uint32_t ID, uint32_t K, int64_t pos0,
                                      uint32_t *sel, uint32_t *n_sel, char *err, size_t errlen) {
    scope S(err, errlen);
    float *dq = S.dev<float>((size_t)T * I * ID, qi), *dw = S.dev<float>((size_t)T * I, wi);
    float *dk = S.dev<float>((size_t)n_keys * ID, keys), *dsc = S.dev<float>((size_t)T * n_keys);
    uint32_t *ds = S.dev<uint32_t>((size_t)T * K), *dn = S.dev<uint32_t>(T);
    int64_t *dp = S.dev<int64_t>(1, &pos0);
    if (!S.ok) return false;
    /* the tensor-core scores when queries and keys are exact in BF16 (FP4-simulated inputs) */
    bool fp4 = true;
    for (size_t i = 0; fp4 && i < (size_t)T * I * ID; i++) fp4 = (*(const uint32_t *)&qi[i] & 0xffffu) == 0;
    for (size_t i = 0; fp4 && i < (size_t)n_keys * ID; i++) fp4 = (*(const uint32_t *)&keys[i] & 0xffffu) == 0;
    cu_indexer(S.st, dq, dw, wscale, dk, n_keys, T, I, ID, K, dp, dsc, ds, dn, fp4, true);
    S.get(sel, ds, (size_t)T * K);
    S.get(n_sel, dn, T);
    return S.ok;
}

static int g_attn_q_post;
static float g_attn_q_eps;
extern "C" void ds4_cuda_test_set_attn_q_post(bool on, float eps) {
    g_attn_q_post = on;
    g_attn_q_eps = eps;
}

extern "C" bool ds4_cuda_test_attention(const float *q, uint32_t T, uint32_t H, uint32_t D, uint32_t n_swa,
                                        uint32_t ratio, uint32_t top_k, uint32_t n_rot, const float *inv_freq,
                                        const float *sinks, const float *raw, uint32_t raw_cap, const float *comp,
                                        uint32_t n_comp, const uint32_t *sel, const uint32_t *n_sel, int64_t pos0,
                                        uint32_t splits, float *o, char *err, size_t errlen) {
    scope S(err, errlen);
    float *dq = S.dev<float>((size_t)T * H * D, q), *df = S.dev<float>(n_rot / 2, inv_freq);
    float *dsk = S.dev<float>(H, sinks), *draw = S.dev<float>((size_t)raw_cap * D, raw);
    float *dcomp = S.dev<float>((size_t)(n_comp ? n_comp : 1) * D, comp);
    uint32_t *dsel = sel ? S.dev<uint32_t>((size_t)T * top_k, sel) : nullptr;
    uint32_t *dns = n_sel ? S.dev<uint32_t>(T, n_sel) : nullptr;
    int64_t *dp = S.dev<int64_t>(1, &pos0);
    const size_t pf = cu_attention_part_floats(T, H, D, splits ? splits : 1);
    float *part = S.dev<float>(pf), *dout = S.dev<float>((size_t)T * H * D);
    if (!S.ok) return false;
    /* (all uploaded before the launch: rows may be staged early; wide: the
     * decode kernels a step at this position runs) */
    attn_params ap = {H, D, n_swa, raw_cap, ratio, top_k, n_rot, dsk, draw, dcomp, dsel, dns, df, g_attn_q_post, g_attn_q_eps,
                      1, cu_wide_angles(pos0 + T - 1)};
    if (!splits) { /* the tensor-core prefill kernel */
        if (!cu_attention_tc(S.st, ap, dq, T, dp, dout)) return S.fail("tensor-core attention does not apply"), false;
    } else
        cu_attention(S.st, ap, dq, T, dp, part, pf, splits, dout, nullptr);
    S.get(o, dout, (size_t)T * H * D);
    return S.ok;
}

extern "C" bool ds4_cuda_test_head_hc(const ds4_weight *fn, const float *scale, const float *base, const float *R,
                                      uint32_t T, uint32_t C, uint32_t E, float rms_eps, float hc_eps,
                                      const float *norm, float *x, char *err, size_t errlen) {
    scope S(err, errlen);
    dweight dw;
    if (!S.weight(fn, &dw)) return false;
    float *dR = S.dev<float>((size_t)T * C * E, R), *dsc = S.dev<float>(1, scale), *db = S.dev<float>(C, base);
    float *dn = S.dev<float>(E, norm), *part = S.dev<float>(cu_hc_part_floats(T, C, C, E));
    dact dx = S.act(T, E, nullptr);
    if (!S.ok) return false;
    cu_head_hc(S.st, dw, dsc, db, dR, T, C, E, rms_eps, hc_eps, dn, part, dx);
    S.get(x, dx.f, (size_t)T * E);
    return S.ok;
}

/* hc_post with the next mix fused, then what consumes those partials:
 * hc_pre (head false: pre2/post2/comb2/out) or the output HC head (head
 * true: out only; fn has C rows and scale one value) */
extern "C" bool ds4_cuda_test_hc_post_fused(float *R, const float *y, const float *post, const float *comb, uint32_t T,
                                            uint32_t C, uint32_t E, const ds4_weight *fn, const float *scale,
                                            const float *base, uint32_t iters, float rms_eps, float hc_eps,
                                            const float *norm, bool head, int gram, float *pre2, float *post2,
                                            float *comb2, float *out, int8_t *out_q8, float *out_qk_scale, char *err,
                                            size_t errlen) {
    scope S(err, errlen);
    dweight dw;
    if (!S.weight(fn, &dw)) return false;
    const uint32_t M = head ? C : (2 + C) * C;
    float *dR = S.dev<float>((size_t)T * C * E, R), *dy = S.dev<float>((size_t)T * E, y);
    float *dpost = S.dev<float>(T * C, post), *dcomb = S.dev<float>(T * C * C, comb);
    float *part = S.dev<float>(cu_hc_part_floats(T, M, C, E));
    float *dsc = S.dev<float>(head ? 1 : 3, scale), *dbase = S.dev<float>(M, base), *dnorm = S.dev<float>(E, norm);
    float *dpre2 = S.dev<float>(T * C), *dpost2 = S.dev<float>(T * C), *dcomb2 = S.dev<float>(T * C * C);
    dact dout = S.act(T, E, nullptr);
    if (!S.ok) return false;
    double *dgram = gram ? S.dev<double>(cu_hc_gram_doubles(C, E)) : NULL;
    if (!S.ok) return false;
    bool gram_formed = false;
    const uint32_t Sp = cu_hc_post(S.st, dR, dy, dpost, dcomb, T, C, E, &dw, part, NULL, NULL, 0, dgram, &gram_formed);
    if (!Sp) {
        snprintf(err, errlen, "hc_post did not form the mix partials");
        return false;
    }
    if (gram && !gram_formed) {
        snprintf(err, errlen, "hc_post did not form the Gram partials");
        return false;
    }
    if (head) {
        cu_head_hc(S.st, dw, dsc, dbase, dR, T, C, E, rms_eps, hc_eps, dnorm, part, dout, Sp);
    } else {
        hc_params hp = {dsc, dbase, C, iters, hc_eps, Sp};
        cu_hc_pre(S.st, hp, part, dR, T, E, dnorm, rms_eps, dpre2, dpost2, dcomb2, dout, dgram, gram == 2);
        if (gram == 2) cu_hc_split(S.st, hp, part, E, rms_eps, dpre2, dpost2, dcomb2);
        S.get(pre2, dpre2, T * C);
        S.get(post2, dpost2, T * C);
        S.get(comb2, dcomb2, T * C * C);
    }
    S.get(R, dR, (size_t)T * C * E);
    S.get(out, dout.f, (size_t)T * E);
    if (out_q8 && dout.q8) S.get(out_q8, dout.q8, (size_t)T * E);
    if (out_qk_scale && dout.qk) S.get(out_qk_scale, dout.dk, (size_t)T * E / 256);
    return S.ok;
}

extern "C" bool ds4_cuda_test_argmax(const float *x, uint32_t rows, uint32_t n, int32_t *out, char *err,
                                     size_t errlen) {
    scope S(err, errlen);
    float *dx = S.dev<float>((size_t)rows * n, x);
    int32_t *d = S.dev<int32_t>(rows);
    float *scr = S.dev<float>(cu_argmax_scratch_floats(rows));
    if (!S.ok) return false;
    cu_argmax(S.st, dx, rows, n, d, scr);
    S.get(out, d, rows);
    return S.ok;
}
