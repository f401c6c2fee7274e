/* main.c - ds4-server: options, start-up, signals, shutdown.
 *
 *   ds4-server -m MODEL.gguf [--host 127.0.0.1] [--port 8000] [--ctx 32768] ...
 *
 * docs/SERVER.md lists every option. Start-up loads the model and its
 * tokenizer (the GGUF must carry one), opens the disk KV cache, starts the
 * engine thread and the HTTP daemon, and prints "listening on http://HOST:PORT"
 * (with --port 0 the port the system chose). SIGINT / SIGTERM: stop
 * accepting, cancel running work, save the live session to the disk cache,
 * exit 0.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "server.h"

static void usage(FILE *fp) {
    fprintf(fp,
            "usage: ds4-server -m MODEL.gguf [options]\n"
            "  -m, --model FILE          DS4 GGUF with a tokenizer (required)\n"
            "  --host ADDR               address to bind (default 127.0.0.1; 0.0.0.0 exposes it)\n"
            "  --port N                  port (default 8000; 0 picks a free one)\n"
            "  -c, --ctx N               context size in tokens (default 32768)\n"
            "  -n, --max-tokens N        cap on generated tokens per request (default: the context)\n"
            "  -t, --threads N           CPU threads (default: all cores)\n"
            "  --exact                   full-precision numerics (no FP8/FP4 simulation)\n"
            "  --backend cpu|cuda        where the forward pass runs (default: $DS4_BACKEND, else CUDA when\n"
            "                            built in (make cuda-server) and a GPU is present)\n"
            "  --model-id NAME           model name in /v1/models (default deepseek-v4-flash)\n"
            "  --api-key KEY             require KEY (Authorization: Bearer KEY or x-api-key); also DS4_API_KEY\n"
            "  --cors                    send CORS headers allowing any origin\n"
            "  --cors-origin ORIGIN      send CORS headers allowing ORIGIN\n"
            "  --max-body-mb N           largest request body (default 32)\n"
            "  --max-queue N             requests waiting for the engine before 503 (default 16)\n"
            "  --max-connections N       simultaneous connections (default 64)\n"
            "  --keepalive-ms N          SSE keep-alive interval while nothing is sent (default 5000)\n"
            "  --kv-disk-dir DIR         disk KV cache directory (default: off)\n"
            "  --kv-disk-space-mb N      disk KV cache budget (default 4096)\n"
            "  --kv-cache-min-tokens N   smallest prefix worth saving (default 512)\n"
            "  --kv-cache-continued-interval-tokens N  save again every N new tokens (default 10000)\n"
            "  --tool-memory-max-ids N   tool-call ids whose exact text is kept (default 100000)\n"
            "  --trust-content           tokenize client text with special tokens recognised\n"
            "  --no-rewind               no rewind checkpoint (a snapshot of the last prompt on tmpfs)\n"
            "  --trace FILE              append rendered prompts and generated text to FILE\n"
            "  --test-force              accept the test-only \"ds4_force\" request field\n"
            "  --quiet                   no log lines\n");
}

static bool parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *out) {
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (!*s || *end || s[0] == '-' || v < lo || v > hi) return false;
    *out = v;
    return true;
}

int main(int argc, char **argv) {
    srv_config cfg = {
        .host = "127.0.0.1", .port = 8000, .max_body = 32u << 20, .max_queue = 16, .max_connections = 64,
        .keepalive_ms = 5000, .model_id = SRV_DEFAULT_MODEL_ID, .ctx = 32768, .kv_space_mb = 4096,
        .kv_min_tokens = 512, .kv_interval_tokens = 10000, .tool_memory_max = 100000, .rewind = true,
    };
    bool exact = false;
    const char *backend = NULL;
    uint64_t max_tokens = 0;
    cfg.api_key = getenv("DS4_API_KEY");
    if (cfg.api_key && !cfg.api_key[0]) cfg.api_key = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        uint64_t u;
#define NUM(lo, hi) (v && parse_u64(v, lo, hi, &u) ? (i++, true) : (fprintf(stderr, "ds4-server: %s needs a number in [%llu, %llu]\n", a, (unsigned long long)(lo), (unsigned long long)(hi)), exit(2), false))
#define STR() (v ? (i++, v) : (fprintf(stderr, "ds4-server: %s needs a value\n", a), exit(2), (const char *)NULL))
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) cfg.model_path = STR();
        else if (!strcmp(a, "--host")) cfg.host = STR();
        else if (!strcmp(a, "--port")) { NUM(0, 65535); cfg.port = (int)u; }
        else if (!strcmp(a, "-c") || !strcmp(a, "--ctx")) { NUM(64, 1u << 30); cfg.ctx = (uint32_t)u; }
        else if (!strcmp(a, "-n") || !strcmp(a, "--max-tokens")) { NUM(1, 1u << 30); max_tokens = u; }
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) { NUM(0, 4096); cfg.threads = (int)u; }
        else if (!strcmp(a, "--exact")) exact = true;
        else if (!strcmp(a, "--backend")) backend = STR();
        else if (!strcmp(a, "--model-id")) cfg.model_id = STR();
        else if (!strcmp(a, "--api-key")) cfg.api_key = STR();
        else if (!strcmp(a, "--cors")) cfg.cors = "*";
        else if (!strcmp(a, "--cors-origin")) cfg.cors = STR();
        else if (!strcmp(a, "--max-body-mb")) { NUM(1, 4096); cfg.max_body = (size_t)u << 20; }
        else if (!strcmp(a, "--max-queue")) { NUM(1, 100000); cfg.max_queue = (int)u; }
        else if (!strcmp(a, "--max-connections")) { NUM(1, 100000); cfg.max_connections = (int)u; }
        else if (!strcmp(a, "--keepalive-ms")) { NUM(1, 3600000); cfg.keepalive_ms = (int)u; }
        else if (!strcmp(a, "--kv-disk-dir")) cfg.kv_dir = STR();
        else if (!strcmp(a, "--kv-disk-space-mb")) { NUM(1, 1ull << 30); cfg.kv_space_mb = u; }
        else if (!strcmp(a, "--kv-cache-min-tokens")) { NUM(1, 1u << 30); cfg.kv_min_tokens = (uint32_t)u; }
        else if (!strcmp(a, "--kv-cache-continued-interval-tokens")) { NUM(1, 1u << 30); cfg.kv_interval_tokens = (uint32_t)u; }
        else if (!strcmp(a, "--tool-memory-max-ids")) { NUM(1, 1u << 28); cfg.tool_memory_max = (size_t)u; }
        else if (!strcmp(a, "--trust-content")) cfg.trust_content = true;
        else if (!strcmp(a, "--no-rewind")) cfg.rewind = false;
        else if (!strcmp(a, "--trace")) cfg.trace_path = STR();
        else if (!strcmp(a, "--test-force")) cfg.test_force = true;
        else if (!strcmp(a, "--quiet")) srv_log_quiet = 1;
        else {
            fprintf(stderr, "ds4-server: unknown option '%s' (see --help)\n", a);
            return 2;
        }
#undef NUM
#undef STR
    }
    if (!cfg.model_path) {
        fprintf(stderr, "ds4-server: -m MODEL.gguf is required (see --help)\n");
        return 2;
    }
    cfg.max_output = max_tokens && max_tokens < cfg.ctx ? (uint32_t)max_tokens : cfg.ctx;

    /* signals are taken by sigwait below; every thread inherits this mask */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    char err[512];
    gguf_file *gf = gguf_open(cfg.model_path, err, sizeof err);
    if (!gf) {
        fprintf(stderr, "ds4-server: %s\n", err);
        return 1;
    }
    ds4_tokenizer *tok = ds4_tokenizer_from_gguf(gf, err, sizeof err);
    gguf_close(gf);
    if (!tok) {
        fprintf(stderr, "ds4-server: %s: no usable tokenizer (%s); convert the model with its tokenizer.json\n",
                cfg.model_path, err);
        return 1;
    }
    double t0 = now_s();
    ds4_model *m = ds4_model_load(cfg.model_path, &(ds4_model_params){.n_threads = cfg.threads, .exact = exact, .backend = backend}, err,
                                  sizeof err);
    if (!m) {
        fprintf(stderr, "ds4-server: %s\n", err);
        return 1;
    }
    if (ds4_model_vocab_size(m) != ds4_tokenizer_n_vocab(tok)) {
        fprintf(stderr, "ds4-server: the model has %u logits but its tokenizer %u tokens\n", ds4_model_vocab_size(m),
                ds4_tokenizer_n_vocab(tok));
        return 1;
    }
    srv_log("model %s: %u layers, vocab %u, loaded in %.2fs on %s; context %u tokens", cfg.model_path,
            ds4_model_layer_count(m), ds4_model_vocab_size(m), now_s() - t0, ds4_model_backend(m), cfg.ctx);
    if (cfg.trace_path) trace_open(cfg.trace_path);
    srv_toolmem *tm = toolmem_new(cfg.tool_memory_max);
    srv_kvdisk *kv = NULL;
    if (cfg.kv_dir) {
        kv = kvdisk_open(cfg.kv_dir, cfg.kv_space_mb << 20, cfg.kv_min_tokens, cfg.model_path, tm, err, sizeof err);
        if (!kv) {
            fprintf(stderr, "ds4-server: %s\n", err);
            return 1;
        }
    }
    srv_engine *e = engine_start(&cfg, m, tok, tm, kv, err, sizeof err);
    if (!e) {
        fprintf(stderr, "ds4-server: %s\n", err);
        return 1;
    }
    int port = 0;
    if (!http_start(&cfg, e, tm, kv, tok, &port, err, sizeof err)) {
        fprintf(stderr, "ds4-server: %s\n", err);
        return 1;
    }
    const bool v6 = strchr(cfg.host, ':') != NULL;
    fprintf(stderr, "ds4-server: listening on http://%s%s%s:%d%s%s\n", v6 ? "[" : "", cfg.host, v6 ? "]" : "", port,
            cfg.api_key ? " (API key required)" : "", cfg.cors ? " (CORS on)" : "");
    fflush(stderr);

    int sig = 0;
    sigwait(&set, &sig);
    srv_log("signal %d: shutting down", sig);
    http_quiesce();
    engine_stop(e);
    http_stop();
    engine_free(e);
    kvdisk_close(kv);
    toolmem_free(tm);
    ds4_model_free(m);
    ds4_tokenizer_free(tok);
    srv_log("bye");
    return 0;
}
