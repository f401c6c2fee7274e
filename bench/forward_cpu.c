/* forward_cpu.c - CPU forward-pass benchmark: prefill and decode tokens/s and
 * peak RSS for a model file, at several thread counts.
 *
 *   build/bench/forward_cpu MODEL.gguf [--prompt N] [--gen N] [--threads 1,2,...]
 *
 * Prefill evaluates N random token ids in one call (batched, chunked); decode
 * then generates --gen tokens greedily one at a time. Peak RSS is the
 * process's high-water mark (weights are mmapped, so their resident pages
 * count once touched). bench/cpu_forward.sh builds the mid-size q2 model it
 * is usually run on. Without arguments it prints usage and exits 0 (so
 * `make bench` can run every bench binary). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "ds4.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        printf("usage: forward_cpu MODEL.gguf [--prompt N] [--gen N] [--threads 1,2]  (see bench/cpu_forward.sh)\n");
        return 0;
    }
    const char *path = argv[1];
    int n_prompt = 512, n_gen = 32;
    char threads_list[64] = "1,2";
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--prompt")) n_prompt = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--gen")) n_gen = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads")) snprintf(threads_list, sizeof threads_list, "%s", argv[i + 1]);
    }
    printf("model,threads,prompt_tokens,prefill_tok_s,gen_tokens,decode_tok_s,peak_rss_mib\n");
    char *save = NULL;
    for (char *tok = strtok_r(threads_list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        int nt = atoi(tok);
        char err[512];
        ds4_model *m = ds4_model_load(path, &(ds4_model_params){.n_threads = nt}, err, sizeof err);
        if (!m) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
        const uint32_t V = ds4_model_vocab_size(m);
        ds4_session *s = ds4_session_new(m, (uint32_t)(n_prompt + n_gen), err, sizeof err);
        int32_t *ids = malloc((size_t)n_prompt * sizeof(int32_t));
        uint64_t x = 88172645463325252ull;
        for (int i = 0; i < n_prompt; i++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            ids[i] = (int32_t)(x % V);
        }
        double t0 = now_s();
        if (!ds4_session_eval(s, ids, (uint32_t)n_prompt, NULL, err, sizeof err)) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
        double t1 = now_s();
        ds4_sampler *g = ds4_sampler_new(&(ds4_sampler_params){.temperature = 0});
        for (int i = 0; i < n_gen; i++) {
            int32_t t = ds4_sampler_sample(g, ds4_session_logits(s), V);
            ds4_session_eval(s, &t, 1, NULL, err, sizeof err);
        }
        double t2 = now_s();
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        printf("%s,%d,%d,%.1f,%d,%.2f,%.0f\n", path, nt, n_prompt, n_prompt / (t1 - t0), n_gen, n_gen / (t2 - t1),
               ru.ru_maxrss / 1024.0);
        fflush(stdout);
        ds4_sampler_free(g);
        free(ids);
        ds4_session_free(s);
        ds4_model_free(m);
    }
    return 0;
}
