/* cmd_chat.c - `ds4 -m FILE -p "text"`: one chat turn from text to streamed text.
 *
 * Renders the prompt with the DeepSeek V4 template (system + user, thinking
 * mode), tokenizes it with the model's own tokenizer, prefills, and streams
 * the generated text until the end-of-sentence token or -n tokens. `--raw`
 * skips the template: the text is tokenized as is (special-token strings
 * recognised). Incomplete UTF-8 at a token boundary is held back, never
 * printed broken. Timings go to stderr.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "chat_template.h"
#include "commands.h"
#include "ds4.h"
#include "tokenizer.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void usage(FILE *out) {
    fprintf(out,
            "usage: ds4 -m FILE.gguf -p TEXT [options]\n"
            "  -p, --prompt TEXT      user message (or --prompt-file F)\n"
            "  -sys, --system TEXT    system message (default \"You are a helpful assistant\")\n"
            "  --think | --nothink | --think-max   thinking mode (default --think)\n"
            "  --raw                  no chat template: tokenize TEXT as is\n"
            "  -n N                   max generated tokens (default 1024)\n"
            "  --temp T --top-k K --top-p P --min-p P --seed S   sampling (default T 1, min-p 0.05)\n"
            "  -c, --ctx N            context size (default 32768)\n"
            "  -t, --threads N        CPU threads (default: all cores)\n"
            "  --exact                turn off the official low-precision simulations\n"
            "  --backend cpu|cuda     where the forward pass runs (default: CUDA when built in and a GPU is present)\n");
}

int ds4_cmd_chat(int argc, char **argv) {
    const char *backend = NULL;
    const char *model = NULL, *prompt = NULL, *prompt_file = NULL, *system = "You are a helpful assistant";
    bool raw = false, exact = false;
    ds4_think_mode think = DS4_THINK_HIGH;
    int n_gen = 1024, threads = 0;
    uint32_t ctx = 32768;
    ds4_sampler_params sp = {.temperature = 1.0f, .top_k = 0, .top_p = 1.0f, .min_p = 0.05f, .seed = 0};
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(f, "-h") || !strcmp(f, "--help")) { usage(stdout); return 0; }
        if (!strcmp(f, "--raw")) { raw = true; continue; }
        if (!strcmp(f, "--exact")) { exact = true; continue; }
        if (!strcmp(f, "--think")) { think = DS4_THINK_HIGH; continue; }
        if (!strcmp(f, "--nothink")) { think = DS4_THINK_NONE; continue; }
        if (!strcmp(f, "--think-max")) { think = DS4_THINK_MAX; continue; }
        if (!v) {
            fprintf(stderr, "ds4: %s needs a value (see ds4 --help)\n", f);
            return 2;
        }
        i++;
        if (!strcmp(f, "-m") || !strcmp(f, "--model")) model = v;
        else if (!strcmp(f, "-p") || !strcmp(f, "--prompt")) prompt = v;
        else if (!strcmp(f, "--prompt-file")) prompt_file = v;
        else if (!strcmp(f, "-sys") || !strcmp(f, "--system")) system = v;
        else if (!strcmp(f, "-n") || !strcmp(f, "--tokens")) n_gen = atoi(v);
        else if (!strcmp(f, "-c") || !strcmp(f, "--ctx")) ctx = (uint32_t)strtoul(v, NULL, 10);
        else if (!strcmp(f, "-t") || !strcmp(f, "--threads")) threads = atoi(v);
        else if (!strcmp(f, "--temp")) sp.temperature = strtof(v, NULL);
        else if (!strcmp(f, "--top-k")) sp.top_k = atoi(v);
        else if (!strcmp(f, "--top-p")) sp.top_p = strtof(v, NULL);
        else if (!strcmp(f, "--min-p")) sp.min_p = strtof(v, NULL);
        else if (!strcmp(f, "--seed")) sp.seed = strtoull(v, NULL, 10);
        else if (!strcmp(f, "--backend")) backend = v;
        else {
            fprintf(stderr, "ds4: unknown option '%s' (see ds4 --help)\n", f);
            return 2;
        }
    }
    char *file_text = NULL;
    if (prompt_file && !(prompt = file_text = ds4_cli_read_file(prompt_file))) {
        fprintf(stderr, "ds4: cannot read %s\n", prompt_file);
        return 1;
    }
    if (!model || !prompt) {
        fprintf(stderr, "ds4: -m FILE.gguf and -p TEXT are required\n");
        usage(stderr);
        free(file_text);
        return 2;
    }
    char err[512];
    int rc = 1;
    ds4_model *m = ds4_model_load(model, &(ds4_model_params){.n_threads = threads, .exact = exact, .backend = backend}, err, sizeof err);
    ds4_tokenizer *tok = NULL;
    ds4_session *s = NULL;
    ds4_sampler *smp = NULL;
    ds4_tokens ids = {0};
    if (!m || !(tok = ds4_model_load_tokenizer(m, err, sizeof err))) {
        fprintf(stderr, "ds4: %s\n", err);
        goto out;
    }
    bool ok = raw ? ds4_tokenize(tok, prompt, strlen(prompt), true, &ids)
                  : ds4_chat_prompt_ids(tok, system, prompt, think, ctx, true, &ids, err, sizeof err);
    if (!ok) {
        fprintf(stderr, "ds4: cannot render/tokenize the prompt: %s\n", raw ? "out of memory" : err);
        goto out;
    }
    if (ids.n >= ctx) {
        fprintf(stderr, "ds4: the prompt is %zu tokens, the context is %u (use --ctx)\n", ids.n, ctx);
        goto out;
    }
    if (!(s = ds4_session_new(m, ctx, err, sizeof err))) {
        fprintf(stderr, "ds4: %s\n", err);
        goto out;
    }
    double t0 = now_s();
    if (!ds4_session_eval(s, ids.ids, (uint32_t)ids.n, NULL, err, sizeof err)) {
        fprintf(stderr, "ds4: %s\n", err);
        goto out;
    }
    double t1 = now_s();
    smp = ds4_sampler_new(&sp);
    const int32_t eos = ds4_tokenizer_eos(tok);
    const uint32_t V = ds4_model_vocab_size(m);
    ds4_utf8_stream us;
    ds4_utf8_stream_init(&us, false);
    int produced = 0;
    for (; produced < n_gen; produced++) {
        int32_t t = ds4_sampler_sample(smp, ds4_session_logits(s), V);
        if (t == eos) break;
        size_t blen = 0;
        const char *bytes = ds4_token_bytes(tok, t, &blen);
        char outb[4 * 256 + 16];
        if (bytes && blen <= 256) fwrite(outb, 1, ds4_utf8_stream_feed(&us, bytes, blen, outb), stdout);
        fflush(stdout);
        if (ds4_session_n_tokens(s) >= ds4_session_n_ctx(s)) {
            fprintf(stderr, "\nds4: context full (%u tokens)\n", ds4_session_n_ctx(s));
            break;
        }
        if (!ds4_session_eval(s, &t, 1, NULL, err, sizeof err)) {
            fprintf(stderr, "\nds4: %s\n", err);
            goto out;
        }
    }
    char tail[16];
    fwrite(tail, 1, ds4_utf8_stream_flush(&us, tail), stdout);
    printf("\n");
    double t2 = now_s();
    fprintf(stderr, "prompt %zu tokens, %.1f tokens/s; generated %d tokens, %.2f tokens/s\n", ids.n,
            ids.n / (t1 - t0), produced, produced / (t2 - t1 > 0 ? t2 - t1 : 1e-9));
    rc = 0;
out:
    ds4_tokens_free(&ids);
    ds4_sampler_free(smp);
    ds4_session_free(s);
    ds4_tokenizer_free(tok);
    ds4_model_free(m);
    free(file_text);
    return rc;
}
