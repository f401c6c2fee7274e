/* ds4_bench.c - ./ds4-bench: prefill and decode speed at context frontiers.
 *
 *   ds4-bench (-m FILE.gguf | --synthetic flash-q2|flash-q4 [--layers N])
 *             [--backend cpu|cuda] [--frontiers 2048,8192,32768,131072]
 *             [--ctx N] [--gen N] [--chunk N] [--kv-fill prefill|random]
 *             [--csv FILE] [--profile] [--peak-gbs G] [--threads N]
 *
 * Loads (or synthesises) the model once, makes one session of --ctx tokens
 * (sized up front: a context that does not fit fails here, with the budget),
 * then walks a random token sequence to each frontier: the new interval is
 * prefilled (timed) and --gen tokens are decoded greedily (timed; on CUDA the
 * whole greedy loop runs on the device, one graph launch per token). One CSV
 * row per frontier (docs/BENCH.md has the columns). With --kv-fill random
 * the KV state is filled with random rows instead of prefilling, to measure
 * decode at deep frontiers quickly (no prefill numbers then).
 *
 * The roofline columns: decode_bytes is what one decode step must read from
 * device memory (every dense weight, 6 routed experts per layer, the LM head,
 * the KV rows attended); achieved_gbs = decode_bytes / time per token;
 * roofline_frac = achieved_gbs / the card's peak bandwidth. With --layers N on
 * a GPU, per-layer decode times (CUDA events) extrapolate the full 43-layer
 * rate (est_full_tps).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "cuda/ds4_cuda.h"
#include "ds4.h"
#include "engine.h"
#include "synthetic.h"

/* CUDA helpers: present only in `make cuda` builds */
#pragma weak ds4_cuda_info_get
#pragma weak ds4_cuda_decode_bytes
#pragma weak ds4_cuda_profile_decode
#pragma weak ds4_cuda_decode_greedy
#pragma weak ds4_cuda_fake_fill
#pragma weak ds4_cuda_profile_breakdown
#pragma weak ds4_cuda_set_skip
#pragma weak ds4_cuda_step_names

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static uint64_t rng = 0x1234567ull;
static int32_t rand_token(uint32_t vocab) {
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return (int32_t)(((rng * 0x2545F4914F6CDD1Dull) >> 33) % vocab);
}

static int32_t argmax(const float *x, uint32_t n) {
    uint32_t b = 0;
    for (uint32_t i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return (int32_t)b;
}

/* n greedy device steps after a warm-up one (graph capture): ms a token;
 * *tok: the token to start from, then the last one decoded */
static double timed_decode(ds4_session *s, int32_t *tok, uint32_t gen, char *err, size_t errlen) {
    if (!ds4_cuda_decode_greedy(s, *tok, 1, tok, err, errlen)) return -1;
    const uint32_t n = gen > 1 ? gen - 1 : 1;
    int32_t *out = malloc((size_t)n * sizeof *out); /* decode_greedy writes all n ids */
    if (!out) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    const double t0 = now_s();
    const bool ok = ds4_cuda_decode_greedy(s, *tok, n, out, err, errlen);
    const double ms = (now_s() - t0) / n * 1e3;
    if (ok) *tok = out[n - 1];
    free(out);
    return ok ? ms : -1;
}

/* --skip-sweep: the decode rate at this frontier with each entry's steps
 * left out of the graph (entries ';'-separated, an entry a comma list of
 * step names) against the full graph measured just before it (paired, so
 * the slow drift of a walk - the context grows - cancels): what each step
 * really costs inside the graph. Lines "skip,ctx,entry,tok/s,ms,saved_ms". */
static bool skip_sweep(ds4_session *s, const char *list, uint32_t at, int32_t *tok, uint32_t gen, char *err,
                       size_t errlen) {
    for (const char *p = list; p && *p;) {
        const char *e = strchr(p, ';');
        const size_t len = e ? (size_t)(e - p) : strlen(p);
        char name[256];
        snprintf(name, sizeof name, "%.*s", (int)len, p);
        ds4_cuda_set_skip(s, NULL);
        const double base = timed_decode(s, tok, gen, err, errlen);
        ds4_cuda_set_skip(s, name);
        const double ms = timed_decode(s, tok, gen, err, errlen);
        if (base < 0 || ms < 0) return false;
        printf("skip,%u,%s,%.2f,%.4f,%.4f\n", at, name, 1e3 / ms, ms, base - ms);
        fflush(stdout);
        p = e ? e + 1 : "";
    }
    ds4_cuda_set_skip(s, NULL);
    return true;
}

static int usage(void) {
    fprintf(stderr,
            "usage: ds4-bench (-m FILE.gguf | --synthetic flash-q2|flash-q4 [--layers N]) [--backend cpu|cuda]\n"
            "                 [--frontiers 2048,8192,...] [--ctx N] [--gen N] [--chunk N] [--kv-fill prefill|random]\n"
            "                 [--csv FILE] [--profile] [--peak-gbs G] [--threads N] [--skip-sweep all|STEP;STEP,STEP;...]\n");
    return 2;
}

/* KV content bytes at n tokens (what a session file holds per layer) */
static double kv_bytes(const ds4_hparams *hp, uint64_t n) {
    double b = 0;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        const uint32_t r = hp->compress_ratio[il];
        b += (double)(n < hp->n_swa ? n : hp->n_swa) * hp->head_dim * 4;
        if (r) b += (double)(n / r) * hp->head_dim * 4;
        if (r == 4) b += (double)(n / r) * hp->indexer_head_dim * 4;
    }
    return b;
}

static double peak_from_name(const char *name) {
    if (strstr(name, "H200")) return 4800;
    if (strstr(name, "H100") && strstr(name, "PCIe")) return 2000;
    if (strstr(name, "H100")) return 3350;
    if (strstr(name, "A100")) return 2039;
    return 0;
}

int main(int argc, char **argv) {
    const char *model = NULL, *synth = NULL, *backend = NULL, *csv_path = NULL, *fill = "prefill", *sweep = NULL;
    char frontiers_s[512] = "2048,8192,32768,131072";
    uint32_t layers = 0, ctx = 0, gen = 64;
    int chunk = 0, threads = 0;
    bool profile = false;
    double peak_gbs = 0;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(f, "--profile")) { profile = true; continue; }
        if (!strcmp(f, "-h") || !strcmp(f, "--help")) return usage(), 0;
        if (!v) return usage();
        i++;
        if (!strcmp(f, "-m") || !strcmp(f, "--model")) model = v;
        else if (!strcmp(f, "--synthetic")) synth = v;
        else if (!strcmp(f, "--layers")) layers = (uint32_t)atoi(v);
        else if (!strcmp(f, "--backend")) backend = v;
        else if (!strcmp(f, "--frontiers")) snprintf(frontiers_s, sizeof frontiers_s, "%s", v);
        else if (!strcmp(f, "--ctx")) ctx = (uint32_t)strtoul(v, NULL, 10);
        else if (!strcmp(f, "--gen")) gen = (uint32_t)atoi(v);
        else if (!strcmp(f, "--chunk")) chunk = atoi(v);
        else if (!strcmp(f, "--threads")) threads = atoi(v);
        else if (!strcmp(f, "--kv-fill")) fill = v;
        else if (!strcmp(f, "--csv")) csv_path = v;
        else if (!strcmp(f, "--peak-gbs")) peak_gbs = atof(v);
        else if (!strcmp(f, "--skip-sweep")) sweep = v;
        else return usage();
    }
    if (!model == !synth) return usage();
    const bool random_fill = !strcmp(fill, "random");
    if (!random_fill && strcmp(fill, "prefill") != 0) return usage();

    uint32_t fr[64], n_fr = 0;
    for (char *p = strtok(frontiers_s, ","); p && n_fr < 64; p = strtok(NULL, ",")) fr[n_fr++] = (uint32_t)strtoul(p, NULL, 10);
    if (!n_fr) return usage();
    if (sweep && !strcmp(sweep, "all")) sweep = ds4_cuda_step_names ? ds4_cuda_step_names() : NULL;
    if (sweep && (!ds4_cuda_set_skip || !gen)) {
        fprintf(stderr, "ds4-bench: --skip-sweep needs the CUDA build and --gen >= 2\n");
        return 2;
    }
    uint32_t sweep_n = 0;
    for (const char *p = sweep; p && *p; p = strchr(p, ';') ? strchr(p, ';') + 1 : "") sweep_n++;
    /* tokens a frontier needs past itself: the decode, and the sweep's two timed decodes an entry */
    const uint32_t past = gen + 1 + (sweep_n ? 2 * sweep_n * gen + 2 : 0);
    if (!ctx) ctx = fr[n_fr - 1] + past;
    while (n_fr && fr[n_fr - 1] + past > ctx) {
        fprintf(stderr, "ds4-bench: frontier %u left out: it needs --ctx %u\n", fr[n_fr - 1], fr[n_fr - 1] + past);
        n_fr--;
    }
    if (!n_fr) {
        fprintf(stderr, "ds4-bench: no frontier fits in --ctx %u with --gen %u%s (the first needs --ctx %u)\n", ctx, gen,
                sweep_n ? " and the skip sweep" : "", fr[0] + past);
        return 2;
    }

    char err[1024];
    ds4_model_params mp = {.n_threads = threads, .prefill_chunk = chunk, .backend = backend};
    const double t_load = now_s();
    ds4_model *m = synth ? ds4_model_synthetic(synth, layers, &mp, err, sizeof err) : ds4_model_load(model, &mp, err, sizeof err);
    if (!m) {
        fprintf(stderr, "ds4-bench: %s\n", err);
        return 1;
    }
    const double load_s = now_s() - t_load;
    const ds4_hparams *hp = m->hp;
    const bool cuda = !strcmp(ds4_model_backend(m), "cuda") && ds4_cuda_decode_greedy;
    ds4_session *s = ds4_session_new(m, ctx, err, sizeof err);
    if (!s) {
        fprintf(stderr, "ds4-bench: %s\n", err);
        ds4_model_free(m);
        return 1;
    }
    char desc[512];
    ds4_model_describe(m, s, desc, sizeof desc);
    ds4_cuda_info info;
    memset(&info, 0, sizeof info);
    if (cuda) ds4_cuda_info_get(m, s, &info);
    if (!peak_gbs) peak_gbs = info.peak_bw_gbs > 0 ? info.peak_bw_gbs : peak_from_name(info.name);
    fprintf(stderr, "ds4-bench: %s, %u layers, model ready in %.1f s; %s\n", synth ? synth : model, hp->n_layer, load_s, desc);
    if (peak_gbs > 0) fprintf(stderr, "ds4-bench: roofline peak %.0f GB/s\n", peak_gbs);

    FILE *csv = csv_path ? fopen(csv_path, "w") : NULL;
    const char *hdr = "backend,device,model,layers,ctx_tokens,prefill_tokens,prefill_s,prefill_tps,gen_tokens,gen_s,"
                      "gen_tps,ms_per_token,kv_bytes,kv_alloc_bytes,gpu_mem_used_gib,decode_bytes,achieved_gbs,"
                      "roofline_frac,est_full_tps";
    printf("%s\n", hdr);
    if (csv) fprintf(csv, "%s\n", hdr);

    const uint32_t V = hp->n_vocab;
    int32_t *toks = malloc((size_t)ctx * sizeof(int32_t));
    for (uint32_t i = 0; i < ctx; i++) toks[i] = rand_token(V);
    int rc = 0;
    for (uint32_t f = 0; f < n_fr; f++) {
        const uint32_t have = ds4_session_n_tokens(s);
        if (fr[f] < have) continue;
        const uint32_t n_new = fr[f] - have;
        double pre_s = 0;
        if (random_fill && cuda) {
            if (!ds4_cuda_fake_fill(s, fr[f], 77 + f, err, sizeof err)) { rc = 1; break; }
            /* one real token so logits exist */
        } else if (n_new) {
            const double t0 = now_s();
            if (!ds4_session_eval(s, toks + have, n_new, NULL, err, sizeof err)) { rc = 1; break; }
            pre_s = now_s() - t0;
        }
        /* decode: a warm-up step (graph capture), then gen timed steps */
        int32_t tok = ds4_session_logits(s) ? argmax(ds4_session_logits(s), V) : toks[fr[f] % ctx];
        double gen_s = 0;
        uint32_t gen_done = 0;
        if (gen) {
            if (cuda) {
                const double ms = timed_decode(s, &tok, gen, err, sizeof err);
                if (ms < 0) { rc = 1; break; }
                gen_done = gen - 1 > 0 ? gen - 1 : 1;
                gen_s = ms * gen_done / 1e3;
            } else {
                if (!ds4_session_eval(s, &tok, 1, NULL, err, sizeof err)) { rc = 1; break; }
                const double t0 = now_s();
                for (uint32_t i = 0; i + 1 < gen; i++) {
                    tok = argmax(ds4_session_logits(s), V);
                    if (!ds4_session_eval(s, &tok, 1, NULL, err, sizeof err)) { rc = 1; break; }
                    gen_done++;
                }
                gen_s = now_s() - t0;
                if (rc) break;
            }
        }
        /* per-layer profile (one extra decode step) for extrapolation */
        double est_full = 0;
        const uint64_t pos = ds4_session_n_tokens(s);
        if (cuda && (profile || hp->n_layer < 43) && pos + 1 < ctx) {
            float times[1024 + 2];
            if (ds4_cuda_profile_decode(s, tok, times, err, sizeof err)) {
                /* full model: average time per layer kind (dense / ratio 4 / ratio 128) times their counts in 43 */
                double sum[3] = {0, 0, 0}, cnt[3] = {0, 0, 0}, all = 0;
                for (uint32_t il = 0; il < hp->n_layer; il++) {
                    const int k = hp->compress_ratio[il] == 0 ? 0 : hp->compress_ratio[il] == 4 ? 1 : 2;
                    sum[k] += times[il + 1];
                    cnt[k]++;
                    all += times[il + 1];
                }
                const double avg_all = all / hp->n_layer, full_cnt[3] = {2, 21, 20};
                double full = times[0] + times[hp->n_layer + 1], meas = times[0] + times[hp->n_layer + 1] + all;
                for (int k = 0; k < 3; k++) full += full_cnt[k] * (cnt[k] ? sum[k] / cnt[k] : avg_all);
                if (profile) {
                    fprintf(stderr, "profile at %llu tokens (ms): embed %.3f", (unsigned long long)pos, times[0]);
                    for (uint32_t il = 0; il < hp->n_layer; il++) fprintf(stderr, " L%u[%u] %.3f", il, hp->compress_ratio[il], times[il + 1]);
                    fprintf(stderr, " head %.3f; full-model estimate %.3f ms/token (no graph)\n", times[hp->n_layer + 1], full);
                    char bd[4096];
                    ds4_cuda_profile_breakdown(bd, sizeof bd);
                    fprintf(stderr, "profile by step (all layers): %s\n", bd);
                }
                if (gen_done && gen_s > 0) est_full = 1.0 / (gen_s / gen_done * full / meas);
            } else {
                fprintf(stderr, "ds4-bench: profile: %s\n", err);
            }
        }
        const double ms = gen_done ? gen_s / gen_done * 1e3 : 0;
        const double dbytes = cuda ? ds4_cuda_decode_bytes(m, pos) : 0;
        const double gbs = ms > 0 ? dbytes / (ms / 1e3) / 1e9 : 0;
        double used_gib = 0;
        if (cuda) {
            ds4_cuda_info_get(m, s, &info);
            used_gib = info.mem_total_gib - info.mem_free_gib;
        }
        char row[1024];
        snprintf(row, sizeof row, "%s,%s,%s,%u,%u,%u,%.3f,%.1f,%u,%.3f,%.2f,%.3f,%.0f,%zu,%.2f,%.0f,%.1f,%.3f,%.1f",
                 ds4_model_backend(m), cuda ? info.name : "cpu", synth ? synth : model, hp->n_layer, fr[f],
                 random_fill ? 0 : n_new, pre_s, pre_s > 0 ? n_new / pre_s : 0, gen_done, gen_s,
                 gen_s > 0 ? gen_done / gen_s : 0, ms, kv_bytes(hp, fr[f]), info.kv_bytes, used_gib, dbytes, gbs,
                 peak_gbs > 0 ? gbs / peak_gbs : 0, est_full);
        printf("%s\n", row);
        fflush(stdout);
        if (csv) fprintf(csv, "%s\n", row);
        if (cuda && sweep && !skip_sweep(s, sweep, fr[f], &tok, gen, err, sizeof err)) { rc = 1; break; }
    }
    if (rc) fprintf(stderr, "ds4-bench: %s\n", err);
    if (csv) fclose(csv);
    free(toks);
    ds4_session_free(s);
    ds4_model_free(m);
    return rc;
}
