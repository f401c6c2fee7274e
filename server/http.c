/* http.c - the HTTP side of ds4-server on libmicrohttpd.
 *
 * One thread per connection (MHD_USE_THREAD_PER_CONNECTION): a connection's
 * thread reads the body (bounded by --max-body-mb), checks the API key and
 * the content type, parses, renders and tokenizes the request, then queues a
 * job for the engine and either blocks until it is done (non-streaming) or
 * returns a chunked SSE response whose reader callback blocks on the job's
 * events. While blocked, it polls the socket: a client that hangs up cancels
 * its job (the engine stops at the next token or prefill chunk). Streams send
 * a keep-alive (an SSE comment, or Anthropic's "ping") when nothing else was
 * sent for --keepalive-ms, e.g. during a long prefill.
 *
 * Errors are JSON in the API's own shape (OpenAI {"error":{...}}, Anthropic
 * {"type":"error","error":{...}}), with 400 (bad request, prompt too long),
 * 401 (API key), 404, 405, 413 (body too large), 415 (POST not JSON: blocks
 * simple cross-site form posts), 503 (queue full).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <microhttpd.h>

#include "server.h"

typedef struct {
    const srv_config *cfg;
    srv_engine *engine;
    srv_toolmem *tm;
    srv_kvdisk *kv;
    const ds4_tokenizer *tok;
    struct MHD_Daemon *d;
    double started;
} http_ctx;

static http_ctx H;

enum { R_NONE, R_HEALTH, R_MODELS, R_MODEL, R_CHAT, R_COMPLETIONS, R_RESPONSES, R_MESSAGES, R_COUNT };

typedef struct {
    int route;
    srv_api api;
    sbuf body;
    bool too_large;
} conn_ctx;

static int route_of(const char *url, srv_api *api) {
    if (!strncmp(url, "/v1/", 4)) url += 3;
    *api = API_CHAT;
    if (!strcmp(url, "/health")) return R_HEALTH;
    if (!strcmp(url, "/models")) return R_MODELS;
    if (!strncmp(url, "/models/", 8)) return R_MODEL;
    if (!strcmp(url, "/chat/completions")) return R_CHAT;
    if (!strcmp(url, "/completions")) return (*api = API_COMPLETIONS), R_COMPLETIONS;
    if (!strcmp(url, "/responses")) return (*api = API_RESPONSES), R_RESPONSES;
    if (!strcmp(url, "/messages")) return (*api = API_MESSAGES), R_MESSAGES;
    if (!strcmp(url, "/messages/count_tokens")) return (*api = API_MESSAGES), R_COUNT;
    if (!strncmp(url, "/messages", 9)) *api = API_MESSAGES;
    return R_NONE;
}

static void add_common_headers(struct MHD_Response *r) {
    if (H.cfg->cors) {
        MHD_add_response_header(r, "Access-Control-Allow-Origin", H.cfg->cors);
        MHD_add_response_header(r, "Access-Control-Allow-Headers",
                                "Authorization, Content-Type, x-api-key, anthropic-version, anthropic-beta, openai-beta");
        MHD_add_response_header(r, "Access-Control-Allow-Methods", "GET, POST, OPTIONS");
    }
}

static enum MHD_Result send_body(struct MHD_Connection *c, int status, char *body, const char *type) {
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    MHD_add_response_header(r, "Content-Type", type);
    add_common_headers(r);
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result send_json(struct MHD_Connection *c, int status, char *body) {
    return send_body(c, status, body, "application/json");
}

static enum MHD_Result send_error(struct MHD_Connection *c, srv_api api, int status, const char *msg) {
    return send_json(c, status, fmt_error_json(api, status, msg));
}

/* ---- connection liveness ---- */

static int conn_fd(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    return ci ? ci->connect_fd : -1;
}

static bool client_gone(int fd) {
    if (fd < 0) return false;
    struct pollfd p = {.fd = fd, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) <= 0) return false;
    if (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) return true;
    if (p.revents & POLLIN) {
        char ch;
        ssize_t n = recv(fd, &ch, 1, MSG_PEEK | MSG_DONTWAIT);
        return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
    }
    return false;
}

static void deadline(struct timespec *ts, int ms) {
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    ts->tv_sec += ms / 1000 + ts->tv_nsec / 1000000000L;
    ts->tv_nsec %= 1000000000L;
}

/* ---- auth ---- */

static bool key_equal(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    unsigned diff = (unsigned)(la ^ lb);
    for (size_t i = 0; i < la; i++) diff |= (unsigned char)a[i] ^ (unsigned char)b[i % (lb ? lb : 1)];
    return diff == 0;
}

static bool authorized(struct MHD_Connection *c) {
    if (!H.cfg->api_key) return true;
    const char *x = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "x-api-key");
    if (x && key_equal(x, H.cfg->api_key)) return true;
    const char *a = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (a && !strncasecmp(a, "Bearer ", 7)) {
        a += 7;
        while (*a == ' ') a++;
        if (key_equal(a, H.cfg->api_key)) return true;
    }
    return false;
}

/* ---- GET endpoints ---- */

static cJSON *model_object(void) {
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", H.cfg->model_id);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", 0);
    cJSON_AddStringToObject(m, "owned_by", "ds4");
    cJSON_AddNumberToObject(m, "context_length", H.cfg->ctx);
    cJSON_AddNumberToObject(cJSON_AddObjectToObject(m, "top_provider"), "max_completion_tokens", H.cfg->max_output);
    cJSON *sp = cJSON_AddArrayToObject(m, "supported_parameters");
    static const char *const params[] = {"max_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "stop",
                                         "stream", "tools", "tool_choice", "reasoning", "reasoning_effort", NULL};
    for (int i = 0; params[i]; i++) cJSON_AddItemToArray(sp, cJSON_CreateString(params[i]));
    return m;
}

static enum MHD_Result get_route(struct MHD_Connection *c, int route, const char *url) {
    if (route == R_HEALTH) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "status", "ok");
        cJSON_AddStringToObject(o, "model", H.cfg->model_id);
        cJSON_AddNumberToObject(o, "queued", engine_queue_len(H.engine));
        cJSON_AddNumberToObject(o, "uptime_s", now_s() - H.started);
        cJSON_AddNumberToObject(o, "tool_memory_ids", (double)toolmem_count(H.tm));
        if (H.kv) {
            srv_kv_stats s = kvdisk_stats(H.kv);
            cJSON *k = cJSON_AddObjectToObject(o, "kv_disk");
            cJSON_AddNumberToObject(k, "lookups", (double)s.lookups);
            cJSON_AddNumberToObject(k, "hits", (double)s.hits);
            cJSON_AddNumberToObject(k, "hit_tokens", (double)s.hit_tokens);
            cJSON_AddNumberToObject(k, "saves", (double)s.saves);
            cJSON_AddNumberToObject(k, "evictions", (double)s.evictions);
            cJSON_AddNumberToObject(k, "rejected", (double)s.rejected);
        }
        char *s = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        return send_json(c, 200, s);
    }
    if (route == R_MODELS) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "object", "list");
        cJSON_AddItemToArray(cJSON_AddArrayToObject(o, "data"), model_object());
        char *s = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        return send_json(c, 200, s);
    }
    const char *id = strstr(url, "/models/") + 8;
    if (strcmp(id, H.cfg->model_id)) return send_error(c, API_CHAT, 404, "no such model");
    cJSON *m = model_object();
    char *s = cJSON_PrintUnformatted(m);
    cJSON_Delete(m);
    return send_json(c, 200, s);
}

/* ---- streaming ---- */

typedef struct {
    srv_job *job;
    srv_fmt *fmt;
    int fd;
    sbuf out;
    size_t pos;
    size_t next_ev;
    bool opened, finished;
    double last_send;
} stream_ctx;

static void stream_free(void *cls) {
    stream_ctx *s = cls;
    if (!s->finished) atomic_store(&s->job->cancel, true); /* the connection went away */
    fmt_free(s->fmt);
    sb_free(&s->out);
    job_unref(s->job);
    free(s);
}

/* Formats what the job has produced since the last call (job->mu held). */
static void stream_fill(stream_ctx *s, bool keepalive_due) {
    srv_job *j = s->job;
    for (; s->next_ev < j->n_ev; s->next_ev++) {
        srv_event *ev = &j->ev[s->next_ev];
        if (ev->kind == EV_PROGRESS) continue;
        if (!s->opened) {
            fmt_stream_open(s->fmt, j, &s->out);
            s->opened = true;
        }
        fmt_stream_event(s->fmt, ev, j, &s->out);
    }
    if (j->done) {
        if (!s->opened && !(j->finish && !strcmp(j->finish, "error"))) {
            fmt_stream_open(s->fmt, j, &s->out);
            s->opened = true;
        }
        if (j->finish && !strcmp(j->finish, "error")) fmt_stream_error(s->fmt, j, j->err, &s->out);
        else fmt_stream_close(s->fmt, j, &s->out);
        s->finished = true;
    } else if (s->out.n == 0 && keepalive_due) {
        fmt_keepalive(s->fmt, &s->out);
    }
}

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    stream_ctx *s = cls;
    srv_job *j = s->job;
    for (;;) {
        if (s->pos < s->out.n) {
            size_t n = s->out.n - s->pos < max ? s->out.n - s->pos : max;
            memcpy(buf, s->out.p + s->pos, n);
            s->pos += n;
            s->last_send = now_s();
            return (ssize_t)n;
        }
        s->out.n = 0;
        s->pos = 0;
        if (s->finished) return MHD_CONTENT_READER_END_OF_STREAM;
        pthread_mutex_lock(&j->mu);
        bool due = false;
        while (s->next_ev == j->n_ev && !j->done) {
            struct timespec ts;
            deadline(&ts, 200);
            pthread_cond_timedwait(&j->cv, &j->mu, &ts);
            if (client_gone(s->fd)) {
                atomic_store(&j->cancel, true);
                pthread_mutex_unlock(&j->mu);
                return MHD_CONTENT_READER_END_WITH_ERROR;
            }
            if ((now_s() - s->last_send) * 1000.0 >= H.cfg->keepalive_ms) {
                due = true;
                break;
            }
        }
        stream_fill(s, due);
        pthread_mutex_unlock(&j->mu);
    }
}

/* ---- POST endpoints ---- */

static enum MHD_Result post_route(struct MHD_Connection *c, conn_ctx *cc, const char *url) {
    srv_api api = cc->api;
    char err[512];
    int status = 400;
    srv_request *req = calloc(1, sizeof *req);
    req->count_only = cc->route == R_COUNT;
    if (!srv_parse_request(api, cc->body.p ? cc->body.p : "", cc->body.n, H.cfg, req, &status, err, sizeof err)) {
        srv_request_free(req);
        free(req);
        return send_error(c, api, status, err);
    }
    srv_prompt prompt;
    if (!srv_render(req, H.tm, H.tok, H.cfg, &prompt, err, sizeof err)) {
        srv_request_free(req);
        free(req);
        return send_error(c, api, 400, err);
    }
    if (req->count_only) {
        uint32_t n = prompt.n;
        srv_prompt_free(&prompt);
        srv_request_free(req);
        free(req);
        return send_json(c, 200, fmt_count_tokens_json(n));
    }
    if (prompt.n >= H.cfg->ctx) {
        snprintf(err, sizeof err, "the prompt is %u tokens; this server's context is %u tokens", prompt.n, H.cfg->ctx);
        srv_prompt_free(&prompt);
        srv_request_free(req);
        free(req);
        return send_error(c, api, 400, err);
    }
    srv_job *j = job_new(req);
    j->prompt = prompt;
    static const char *const names[] = {[R_CHAT] = "/v1/chat/completions", [R_COMPLETIONS] = "/v1/completions",
                                        [R_RESPONSES] = "/v1/responses", [R_MESSAGES] = "/v1/messages"};
    j->path = names[cc->route]; /* url lives in the connection's memory, which may go before the job */
    if (!engine_submit(H.engine, j)) {
        job_unref(j);
        return send_error(c, api, 503, "the server is busy: too many queued requests, retry later");
    }
    bool stream = req->stream;
    if (stream) {
        stream_ctx *s = calloc(1, sizeof *s);
        s->job = j; /* takes our reference */
        s->fmt = fmt_new(req, j);
        s->fd = conn_fd(c);
        s->last_send = now_s();
        struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_reader, s, stream_free);
        MHD_add_response_header(r, "Content-Type", "text/event-stream");
        MHD_add_response_header(r, "Cache-Control", "no-cache");
        MHD_add_response_header(r, "X-Accel-Buffering", "no");
        add_common_headers(r);
        enum MHD_Result ret = MHD_queue_response(c, 200, r);
        MHD_destroy_response(r);
        return ret;
    }
    int fd = conn_fd(c);
    pthread_mutex_lock(&j->mu);
    while (!j->done) {
        struct timespec ts;
        deadline(&ts, 200);
        pthread_cond_timedwait(&j->cv, &j->mu, &ts);
        if (!j->done && !atomic_load(&j->cancel) && client_gone(fd)) atomic_store(&j->cancel, true);
    }
    pthread_mutex_unlock(&j->mu);
    enum MHD_Result ret;
    if (atomic_load(&j->cancel) && j->finish && !strcmp(j->finish, "cancelled")) {
        ret = MHD_NO; /* nobody is listening */
    } else if (j->finish && !strcmp(j->finish, "error")) {
        ret = send_error(c, api, j->err_status ? j->err_status : 500, j->err);
    } else {
        srv_fmt *f = fmt_new(req, j);
        for (size_t i = 0; i < j->n_ev; i++) fmt_accumulate(f, &j->ev[i]);
        char *body = fmt_final_json(f, j);
        fmt_free(f);
        ret = send_json(c, 200, body);
    }
    job_unref(j);
    return ret;
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                               const char *version, const char *upload_data, size_t *upload_data_size, void **con_cls) {
    (void)cls;
    (void)version;
    conn_ctx *cc = *con_cls;
    if (!cc) {
        cc = calloc(1, sizeof *cc);
        cc->route = route_of(url, &cc->api);
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > H.cfg->max_body) cc->too_large = true;
        *con_cls = cc;
        return MHD_YES;
    }
    if (*upload_data_size) {
        if (!cc->too_large) {
            if (cc->body.n + *upload_data_size > H.cfg->max_body) {
                cc->too_large = true;
                sb_free(&cc->body);
            } else {
                sb_put(&cc->body, upload_data, *upload_data_size);
            }
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    srv_api api = cc->api;
    if (!strcmp(method, "OPTIONS")) {
        if (!H.cfg->cors) return send_error(c, api, 404, "CORS is off (start the server with --cors)");
        return send_body(c, 204, strdup(""), "text/plain");
    }
    if (cc->route == R_NONE) return send_error(c, api, 404, "no such endpoint");
    if (cc->route != R_HEALTH && !authorized(c))
        return send_error(c, api, 401, "invalid or missing API key (Authorization: Bearer KEY or x-api-key: KEY)");
    bool is_get = cc->route == R_HEALTH || cc->route == R_MODELS || cc->route == R_MODEL;
    if (is_get) {
        if (strcmp(method, "GET") && strcmp(method, "HEAD")) return send_error(c, api, 405, "use GET for this endpoint");
        return get_route(c, cc->route, url);
    }
    if (strcmp(method, "POST")) return send_error(c, api, 405, "use POST for this endpoint");
    if (cc->too_large) {
        char msg[128];
        snprintf(msg, sizeof msg, "the request body is larger than %zu bytes (--max-body-mb)", H.cfg->max_body);
        return send_error(c, api, 413, msg);
    }
    const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type");
    if (ct && !strcasestr(ct, "json"))
        return send_error(c, api, 415, "the request body must be JSON (Content-Type: application/json)");
    return post_route(c, cc, url);
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    (void)cls;
    (void)c;
    (void)toe;
    conn_ctx *cc = *con_cls;
    if (!cc) return;
    sb_free(&cc->body);
    free(cc);
    *con_cls = NULL;
}

static void mhd_log(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && msg[n - 1] == '\n') msg[--n] = 0;
    srv_log("http: %s", msg);
}

bool http_start(const srv_config *cfg, srv_engine *engine, srv_toolmem *tm, srv_kvdisk *kv, const ds4_tokenizer *tok,
                int *port_out, char *err, size_t errlen) {
    H = (http_ctx){.cfg = cfg, .engine = engine, .tm = tm, .kv = kv, .tok = tok, .started = now_s()};
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    char port[16];
    snprintf(port, sizeof port, "%d", cfg->port);
    int rc = getaddrinfo(cfg->host, port, &hints, &ai);
    if (rc != 0 || !ai) {
        snprintf(err, errlen, "--host %s: %s", cfg->host, gai_strerror(rc));
        return false;
    }
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG | MHD_USE_ITC;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    H.d = MHD_start_daemon(flags, (uint16_t)cfg->port, NULL, NULL, handler, NULL, MHD_OPTION_EXTERNAL_LOGGER, mhd_log,
                           NULL, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
                           MHD_OPTION_CONNECTION_LIMIT, (unsigned)cfg->max_connections,
                           MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120, MHD_OPTION_NOTIFY_COMPLETED, completed, NULL,
                           MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!H.d) {
        snprintf(err, errlen, "cannot listen on %s:%d (in use, or not an address of this machine?)", cfg->host, cfg->port);
        return false;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(H.d, MHD_DAEMON_INFO_BIND_PORT);
    *port_out = di ? di->port : cfg->port;
    return true;
}

void http_quiesce(void) {
    if (H.d) MHD_quiesce_daemon(H.d);
}

void http_stop(void) {
    if (H.d) MHD_stop_daemon(H.d);
    H.d = NULL;
}
