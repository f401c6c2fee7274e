/* session_check.c - checks of the session API on a real model file:
 *   1. prefill in one call == prefill split at odd boundaries == token by token
 *      (bit-identical logits: a token's result must not depend on its chunk);
 *   2. save after n1 tokens, load into a fresh session, continue: identical;
 *   3. truncate back to n1 and re-evaluate the rest: identical;
 *   4. a corrupt, truncated or foreign session file is rejected and leaves the
 *      session untouched;
 *   5. out-of-range token ids and context overflow fail without changing state;
 *   6. sampling with a seed is reproducible.
 * usage: session_check MODEL.gguf TOKENS.txt TMPDIR */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ds4.h"

static int failures = 0;
#define CHECK(cond, ...)                            \
    do {                                            \
        if (!(cond)) {                              \
            fprintf(stderr, "FAIL: " __VA_ARGS__);  \
            fprintf(stderr, "\n");                  \
            failures++;                             \
        }                                           \
    } while (0)

static int32_t *read_ids(const char *path, uint32_t *n) {
    FILE *fp = fopen(path, "r");
    if (!fp) return NULL;
    int32_t *ids = malloc(1 << 20);
    *n = 0;
    while (*n < (1 << 18) && fscanf(fp, "%d", &ids[*n]) == 1) (*n)++;
    fclose(fp);
    return ids;
}

static ds4_session *fresh(ds4_model *m, uint32_t ctx) {
    char err[256];
    ds4_session *s = ds4_session_new(m, ctx, err, sizeof err);
    if (!s) {
        fprintf(stderr, "session: %s\n", err);
        exit(1);
    }
    return s;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: session_check MODEL.gguf TOKENS.txt TMPDIR\n");
        return 2;
    }
    char err[512];
    uint32_t n;
    int32_t *ids = read_ids(argv[2], &n);
    if (!ids || n < 16) {
        fprintf(stderr, "need >= 16 token ids in %s\n", argv[2]);
        return 2;
    }
    if (n > 300) n = 300;
    ds4_model_params mp = {.n_threads = 2, .prefill_chunk = 64};
    ds4_model *m = ds4_model_load(argv[1], &mp, err, sizeof err);
    if (!m) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    const uint32_t V = ds4_model_vocab_size(m);
    float *ref = malloc((size_t)n * V * sizeof(float)), *got = malloc((size_t)n * V * sizeof(float));

    /* 1. chunking independence */
    ds4_session *s = fresh(m, n);
    CHECK(ds4_session_eval(s, ids, n, ref, err, sizeof err), "eval: %s", err);
    ds4_session_free(s);
    s = fresh(m, n);
    const uint32_t cuts[] = {1, 7, 70, 3, 100};
    uint32_t done = 0;
    for (int i = 0; done < n; i++) {
        uint32_t k = i < 5 ? cuts[i] : n - done;
        if (k > n - done) k = n - done;
        CHECK(ds4_session_eval(s, ids + done, k, got + (size_t)done * V, err, sizeof err), "eval: %s", err);
        done += k;
    }
    CHECK(memcmp(ref, got, (size_t)n * V * sizeof(float)) == 0, "split prefill differs from one-shot prefill");
    ds4_session_free(s);

    /* 2. save / load / continue */
    const uint32_t n1 = n / 2 + 5;
    char path[4096], bad[4096];
    snprintf(path, sizeof path, "%s/s.ds4s", argv[3]);
    snprintf(bad, sizeof bad, "%s/bad.ds4s", argv[3]);
    s = fresh(m, n);
    CHECK(ds4_session_eval(s, ids, n1, NULL, err, sizeof err), "eval: %s", err);
    CHECK(ds4_session_save(s, path, err, sizeof err), "save: %s", err);
    ds4_session *s2 = fresh(m, n);
    CHECK(ds4_session_load(s2, path, err, sizeof err), "load: %s", err);
    CHECK(ds4_session_n_tokens(s2) == n1, "loaded %u tokens, expected %u", ds4_session_n_tokens(s2), n1);
    CHECK(memcmp(ds4_session_logits(s2), ref + (size_t)(n1 - 1) * V, V * sizeof(float)) == 0,
          "loaded logits differ");
    CHECK(ds4_session_eval(s2, ids + n1, n - n1, got, err, sizeof err), "eval after load: %s", err);
    CHECK(memcmp(got, ref + (size_t)n1 * V, (size_t)(n - n1) * V * sizeof(float)) == 0,
          "continuation after load differs from the uninterrupted run");

    /* 3. truncate and re-evaluate */
    CHECK(ds4_session_truncate(s2, n1, err, sizeof err), "truncate: %s", err);
    CHECK(ds4_session_n_tokens(s2) == n1, "truncate kept %u tokens", ds4_session_n_tokens(s2));
    CHECK(ds4_session_eval(s2, ids + n1, n - n1, got, err, sizeof err), "eval after truncate: %s", err);
    CHECK(memcmp(got, ref + (size_t)n1 * V, (size_t)(n - n1) * V * sizeof(float)) == 0,
          "continuation after truncate differs");

    /* 4. bad session files leave the session untouched */
    FILE *fp = fopen(path, "rb");
    fseek(fp, 0, SEEK_END);
    long size = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    char *buf = malloc((size_t)size);
    if (fread(buf, 1, (size_t)size, fp) != (size_t)size) size = 0;
    fclose(fp);
    const uint32_t before = ds4_session_n_tokens(s2);
    for (int variant = 0; variant < 3; variant++) {
        fp = fopen(bad, "wb");
        if (variant == 0) { buf[size / 2] ^= 0x40; fwrite(buf, 1, (size_t)size, fp); buf[size / 2] ^= 0x40; }
        if (variant == 1) fwrite(buf, 1, (size_t)size / 3, fp);
        if (variant == 2) fputs("not a session at all, just text\n", fp);
        fclose(fp);
        err[0] = 0;
        CHECK(!ds4_session_load(s2, bad, err, sizeof err), "corrupt session file %d accepted", variant);
        CHECK(strlen(err) > 0, "no error message for bad session %d", variant);
        CHECK(ds4_session_n_tokens(s2) == before, "failed load changed the session");
    }
    ds4_session *small = fresh(m, n1 - 1);
    CHECK(!ds4_session_load(small, path, err, sizeof err), "session larger than the context accepted");
    ds4_session_free(small);
    free(buf);

    /* 5. input validation */
    int32_t bad_ids[2] = {ids[0], (int32_t)V};
    CHECK(!ds4_session_eval(s2, bad_ids, 2, NULL, err, sizeof err) && strstr(err, "out of range"),
          "out-of-range token accepted");
    CHECK(ds4_session_n_tokens(s2) == n, "failed eval changed the session");
    CHECK(!ds4_session_eval(s2, ids, 1, NULL, err, sizeof err) && strstr(err, "context overflow"),
          "context overflow accepted: %s", err);

    /* 6. seeded sampling */
    int32_t a[8], b[8];
    for (int rep = 0; rep < 2; rep++) {
        ds4_sampler *smp = ds4_sampler_new(&(ds4_sampler_params){.temperature = 1.0f, .top_k = 40, .top_p = 0.9f,
                                                                   .min_p = 0.01f, .seed = 1234});
        for (int i = 0; i < 8; i++) (rep ? b : a)[i] = ds4_sampler_sample(smp, ref + (size_t)i * V, V);
        ds4_sampler_free(smp);
    }
    CHECK(memcmp(a, b, sizeof a) == 0, "same seed gave different samples");
    ds4_sampler *greedy = ds4_sampler_new(&(ds4_sampler_params){.temperature = 0});
    for (uint32_t i = 0; i < 8; i++) {
        int32_t t = ds4_sampler_sample(greedy, ref + (size_t)i * V, V);
        for (uint32_t v = 0; v < V; v++) CHECK(ref[(size_t)i * V + v] <= ref[(size_t)i * V + t], "greedy not argmax");
    }
    ds4_sampler_free(greedy);

    ds4_session_free(s);
    ds4_session_free(s2);
    ds4_model_free(m);
    free(ref);
    free(got);
    free(ids);
    if (failures) return 1;
    printf("session checks passed (%u tokens, split/save/load/truncate bit-identical)\n", n);
    return 0;
}
