/* cmd_run.c - `ds4 logits` and `ds4 generate`: the token-id interfaces.
 *
 *   ds4 logits -m FILE.gguf --tokens-file IDS.txt --out OUT.f32 [--exact] [--decode]
 *       [--dump-topk F.i32] [--sim-no-f16]
 *       writes little-endian float32 logits [n_tokens x vocab], one row per
 *       input position (batched prefill, or one token at a time with --decode)
 *   ds4 generate -m FILE.gguf --tokens "1 2 3" -n N [--temp T] [--seed S]
 *       [--top-k K] [--top-p P] [--min-p P] [--exact]
 *       prints the generated ids, space separated, on one line
 * Common: --threads N, --ctx N (default: prompt + generated tokens),
 * --chunk N (prefill chunk), --save-session FILE, --load-session FILE,
 * --backend cpu|cuda (default: $DS4_BACKEND, else CUDA when built in and a
 * GPU is present).
 * Errors are one line on stderr and a non-zero exit.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "ds4.h"

typedef struct {
    const char *model, *tokens_file, *tokens_str, *out, *save, *load, *dump_topk, *backend;
    bool exact, decode, no_f16;
    int threads, chunk, n_gen;
    uint32_t ctx;
    ds4_sampler_params sp;
} run_args;

static int parse_ids(const char *text, int32_t **out, uint32_t *n, char *err, size_t errlen) {
    size_t cap = 64;
    *out = malloc(cap * sizeof(int32_t));
    *n = 0;
    const char *p = text;
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == ',') p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX) {
            snprintf(err, errlen, "bad token id near '%.20s'", p);
            return -1;
        }
        if (*n == cap) *out = realloc(*out, (cap *= 2) * sizeof(int32_t));
        (*out)[(*n)++] = (int32_t)v;
        p = end;
    }
    return 0;
}

static int usage_error(const char *cmd, const char *msg) {
    fprintf(stderr, "ds4 %s: %s (see ds4 %s --help)\n", cmd, msg, cmd);
    return 2;
}

static int parse_args(const char *cmd, int argc, char **argv, run_args *a) {
    memset(a, 0, sizeof *a);
    a->sp = (ds4_sampler_params){.temperature = 0, .top_k = 0, .top_p = 1, .min_p = 0, .seed = 0};
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(f, "--exact")) { a->exact = true; continue; }
        if (!strcmp(f, "--decode")) { a->decode = true; continue; }
        if (!strcmp(f, "--sim-no-f16")) { a->no_f16 = true; continue; }
        if (!v) return usage_error(cmd, "missing value after the last option");
        i++;
        if (!strcmp(f, "-m") || !strcmp(f, "--model")) a->model = v;
        else if (!strcmp(f, "--tokens-file")) a->tokens_file = v;
        else if (!strcmp(f, "--tokens")) a->tokens_str = v;
        else if (!strcmp(f, "--out")) a->out = v;
        else if (!strcmp(f, "--save-session")) a->save = v;
        else if (!strcmp(f, "--dump-topk")) a->dump_topk = v;
        else if (!strcmp(f, "--backend")) a->backend = v;
        else if (!strcmp(f, "--load-session")) a->load = v;
        else if (!strcmp(f, "--threads") || !strcmp(f, "-t")) a->threads = atoi(v);
        else if (!strcmp(f, "--chunk")) a->chunk = atoi(v);
        else if (!strcmp(f, "--ctx") || !strcmp(f, "-c")) a->ctx = (uint32_t)strtoul(v, NULL, 10);
        else if (!strcmp(f, "-n")) a->n_gen = atoi(v);
        else if (!strcmp(f, "--temp")) a->sp.temperature = strtof(v, NULL);
        else if (!strcmp(f, "--seed")) a->sp.seed = strtoull(v, NULL, 10);
        else if (!strcmp(f, "--top-k")) a->sp.top_k = atoi(v);
        else if (!strcmp(f, "--top-p")) a->sp.top_p = strtof(v, NULL);
        else if (!strcmp(f, "--min-p")) a->sp.min_p = strtof(v, NULL);
        else {
            char msg[128];
            snprintf(msg, sizeof msg, "unknown option '%s'", f);
            return usage_error(cmd, msg);
        }
    }
    if (!a->model) return usage_error(cmd, "-m FILE.gguf is required");
    if (a->threads < 0 || a->chunk < 0 || a->n_gen < 0) return usage_error(cmd, "negative count");
    return 0;
}

/* Loads model + session (+ saved state), returns 0 or an exit status. */
static int open_session(const char *cmd, const run_args *a, uint32_t n_needed, ds4_model **m, ds4_session **s) {
    char err[512];
    ds4_model_params mp = {.n_threads = a->threads, .exact = a->exact, .prefill_chunk = a->chunk,
                           .no_f16_rounding = a->no_f16, .backend = a->backend};
    *m = ds4_model_load(a->model, &mp, err, sizeof err);
    if (!*m) {
        fprintf(stderr, "ds4 %s: %s\n", cmd, err);
        return 1;
    }
    uint32_t ctx = a->ctx ? a->ctx : (n_needed ? n_needed : 1);
    *s = ds4_session_new(*m, ctx, err, sizeof err);
    if (!*s) {
        fprintf(stderr, "ds4 %s: %s\n", cmd, err);
        return 1;
    }
    if (a->load && !ds4_session_load(*s, a->load, err, sizeof err)) {
        fprintf(stderr, "ds4 %s: %s\n", cmd, err);
        return 1;
    }
    return 0;
}

int ds4_cmd_logits(int argc, char **argv) {
    if (argc > 1 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
        printf("usage: ds4 logits -m FILE.gguf --tokens-file IDS.txt --out OUT.f32 [--exact] [--decode]\n"
               "                  [--threads N] [--ctx N] [--chunk N] [--load-session F] [--save-session F]\n"
               "                  [--dump-topk F.i32]  indexer choices, int32 [ratio-4 layers][tokens][top_k]\n"
               "                  [--sim-no-f16]       keep FP8/FP4 simulation, skip F16 cache rounding\n"
               "                  [--backend cpu|cuda] where the forward pass runs (default: CUDA when built in)\n");
        return 0;
    }
    run_args a;
    int rc = parse_args("logits", argc, argv, &a);
    if (rc) return rc;
    if (!a.tokens_file || !a.out) return usage_error("logits", "--tokens-file and --out are required");
    char err[512];
    char *text = ds4_cli_read_file(a.tokens_file);
    if (!text) {
        fprintf(stderr, "ds4 logits: %s: cannot read: %s\n", a.tokens_file, strerror(errno));
        return 1;
    }
    int32_t *ids;
    uint32_t n;
    if (parse_ids(text, &ids, &n, err, sizeof err)) {
        fprintf(stderr, "ds4 logits: %s: %s\n", a.tokens_file, err);
        return 1;
    }
    free(text);
    if (n == 0) {
        fprintf(stderr, "ds4 logits: %s: no token ids\n", a.tokens_file);
        return 1;
    }
    ds4_model *m = NULL;
    ds4_session *s = NULL;
    if ((rc = open_session("logits", &a, n + (a.ctx ? 0 : 0), &m, &s))) goto out;
    if (!a.ctx && ds4_session_n_tokens(s) + n > ds4_session_n_ctx(s)) {
        /* default context: exactly what this run needs */
        ds4_session_free(s);
        s = ds4_session_new(m, n, err, sizeof err);
    }
    const uint32_t V = ds4_model_vocab_size(m);
    float *logits = malloc((size_t)n * V * sizeof(float));
    if (!logits) {
        fprintf(stderr, "ds4 logits: out of memory for %u x %u logits\n", n, V);
        rc = 1;
        goto out;
    }
    int32_t *topk = NULL;
    size_t topk_n = 0;
    if (a.dump_topk) {
        uint32_t n_csa = 0, K = 0;
        if (!ds4_model_indexer_shape(m, &n_csa, &K)) n_csa = 0;
        topk_n = (size_t)n_csa * n * K;
        topk = malloc((topk_n ? topk_n : 1) * sizeof(int32_t));
        for (size_t i = 0; i < topk_n; i++) topk[i] = -1;
        ds4_session_trace_indexer(s, topk, n);
    }
    bool ok = true;
    if (a.decode)
        for (uint32_t i = 0; ok && i < n; i++) ok = ds4_session_eval(s, ids + i, 1, logits + (size_t)i * V, err, sizeof err);
    else
        ok = ds4_session_eval(s, ids, n, logits, err, sizeof err);
    if (!ok) {
        fprintf(stderr, "ds4 logits: %s\n", err);
        rc = 1;
    } else {
        FILE *fp = fopen(a.out, "wb");
        if (!fp || fwrite(logits, sizeof(float), (size_t)n * V, fp) != (size_t)n * V || fclose(fp) != 0) {
            fprintf(stderr, "ds4 logits: %s: write failed: %s\n", a.out, strerror(errno));
            rc = 1;
        }
        if (!rc && a.save && !ds4_session_save(s, a.save, err, sizeof err)) {
            fprintf(stderr, "ds4 logits: %s\n", err);
            rc = 1;
        }
        if (!rc && topk) {
            FILE *tf = fopen(a.dump_topk, "wb");
            if (!tf || fwrite(topk, sizeof(int32_t), topk_n, tf) != topk_n || fclose(tf) != 0) {
                fprintf(stderr, "ds4 logits: %s: write failed\n", a.dump_topk);
                rc = 1;
            }
        }
    }
    ds4_session_trace_indexer(s, NULL, 0);
    free(topk);
    free(logits);
out:
    free(ids);
    ds4_session_free(s);
    ds4_model_free(m);
    return rc;
}

int ds4_cmd_generate(int argc, char **argv) {
    if (argc > 1 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
        printf("usage: ds4 generate -m FILE.gguf --tokens \"1 2 3\" -n N [--temp T] [--seed S] [--top-k K]\n"
               "                    [--top-p P] [--min-p P] [--exact] [--threads N] [--ctx N]\n"
               "                    [--load-session F] [--save-session F] [--backend cpu|cuda]\n"
               "Greedy unless --temp > 0. Prints the generated token ids on one line.\n");
        return 0;
    }
    run_args a;
    int rc = parse_args("generate", argc, argv, &a);
    if (rc) return rc;
    if (!a.tokens_str && !a.load) return usage_error("generate", "--tokens (or --load-session) is required");
    char err[512];
    int32_t *ids = NULL;
    uint32_t n = 0;
    if (a.tokens_str && parse_ids(a.tokens_str, &ids, &n, err, sizeof err)) {
        fprintf(stderr, "ds4 generate: --tokens: %s\n", err);
        free(ids);
        return 2;
    }
    ds4_model *m = NULL;
    ds4_session *s = NULL;
    ds4_sampler *smp = NULL;
    if ((rc = open_session("generate", &a, n + (uint32_t)a.n_gen, &m, &s))) goto out;
    if (n && !ds4_session_eval(s, ids, n, NULL, err, sizeof err)) {
        fprintf(stderr, "ds4 generate: %s\n", err);
        rc = 1;
        goto out;
    }
    if (!ds4_session_logits(s)) {
        fprintf(stderr, "ds4 generate: no tokens to continue from\n");
        rc = 1;
        goto out;
    }
    smp = ds4_sampler_new(&a.sp);
    const uint32_t V = ds4_model_vocab_size(m);
    for (int i = 0; i < a.n_gen; i++) {
        int32_t t = ds4_sampler_sample(smp, ds4_session_logits(s), V);
        printf("%s%d", i ? " " : "", t);
        fflush(stdout);
        if (i + 1 < a.n_gen && !ds4_session_eval(s, &t, 1, NULL, err, sizeof err)) {
            printf("\n");
            fprintf(stderr, "ds4 generate: %s\n", err);
            rc = 1;
            goto out;
        }
    }
    printf("\n");
    if (a.save && !ds4_session_save(s, a.save, err, sizeof err)) {
        fprintf(stderr, "ds4 generate: %s\n", err);
        rc = 1;
    }
out:
    free(ids);
    ds4_sampler_free(smp);
    ds4_session_free(s);
    ds4_model_free(m);
    return rc;
}
