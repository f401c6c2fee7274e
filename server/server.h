/* server.h - ds4-server: the types its files share.
 *
 * A request travels like this (docs/SERVER.md has the user's view):
 *
 *   http.c      libmicrohttpd thread per connection: body, limits, auth, CORS,
 *               routing; hands the JSON to
 *   request.c   one parser per API (chat/completions, completions, responses,
 *               messages) into one srv_request: messages, tools, sampling,
 *               thinking, stop strings, limits;
 *   render.c    DS4 chat rendering (src/chat_template) with exact replay of
 *               earlier tool-call turns (toolmem.c), then tokenization with
 *               the client's text kept plain: a srv_prompt;
 *   engine.c    one worker thread, a FIFO of jobs, one live session: keeps
 *               the longest text prefix it shares with the prompt, or loads a
 *               longer one from the disk KV cache (kvdisk.c), prefills the
 *               rest, samples, splits the output (src/dsml_parser) into
 *               events on the job;
 *   format.c    turns a job's events into each API's JSON body or SSE
 *               stream, written back by http.c.
 */
#ifndef DS4S_SERVER_H
#define DS4S_SERVER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "chat_template.h"
#include "ds4.h"
#include "tokenizer.h"
#include "util.h"

#define SRV_DEFAULT_MODEL_ID "deepseek-v4-flash"

typedef struct {
    const char *host;
    int port;
    const char *api_key; /* NULL: no authentication */
    const char *cors;    /* NULL: no CORS headers; else the allowed origin ("*" ok) */
    size_t max_body;     /* bytes */
    int max_queue;       /* jobs waiting for the engine */
    int max_connections;
    int keepalive_ms; /* SSE keep-alive comment interval while nothing else is sent */
    const char *model_path;
    const char *model_id; /* served model name */
    int threads;
    uint32_t ctx;
    uint32_t max_output; /* cap on generated tokens per request */
    const char *kv_dir;  /* NULL: no disk cache */
    uint64_t kv_space_mb;
    uint32_t kv_min_tokens;
    uint32_t kv_interval_tokens;
    size_t tool_memory_max;
    const char *trace_path;
    bool test_force;    /* accept the test-only "ds4_force" request field */
    bool trust_content; /* tokenize client text with special tokens recognised */
    bool rewind;        /* keep a rewind checkpoint on tmpfs (engine.c) */
} srv_config;

typedef enum { API_CHAT, API_COMPLETIONS, API_RESPONSES, API_MESSAGES } srv_api;

/* ---- a parsed request ---- */
typedef struct {
    srv_api api;
    arena ar;                /* owns every string below */
    const char *model;       /* echoed back */
    bool stream, include_usage;
    ds4_chat_message *msgs;  /* strings and tool calls in ar */
    size_t n_msgs, cap_msgs;
    const char *tools_json;  /* JSON array of function schemas, NULL: no tools */
    const char **tool_names; /* their names */
    int n_tool_names;
    int tool_force;          /* tool_choice: 0 auto, 1 one of force_names must be called (required / any /
                                allowed_tools), 2 the named one */
    const char *tool_force_name;
    const char **force_names; /* the tools a forced call may name (tool_names, or the allowed subset) */
    int n_force_names;
    const char *response_format_json; /* JSON schema the answer must follow, NULL: free text */
    ds4_think_mode think;
    uint32_t max_tokens;     /* 0: server cap */
    ds4_sampler_params sp;
    bool seed_set;
    const char **stop;
    int n_stop;
    const char *force;       /* test-only forced continuation (see --test-force) */
    bool count_only;         /* /v1/messages/count_tokens */
} srv_request;

void srv_request_free(srv_request *r);

/* ---- tool memory: call id -> the exact generated assistant turn ---- */
typedef struct srv_toolmem srv_toolmem;
srv_toolmem *toolmem_new(size_t max_ids);
void toolmem_free(srv_toolmem *tm);
/* Remembers text (the turn after the assistant prefix) for each id. */
void toolmem_put(srv_toolmem *tm, const char *const *ids, size_t n_ids, const char *text, size_t len, bool thinking);
/* Copy of the text for id (malloc'd) or NULL. */
char *toolmem_get(srv_toolmem *tm, const char *id, size_t *len, bool *thinking);
size_t toolmem_count(srv_toolmem *tm);
/* Like toolmem_put, without calling the persist hook (loading a saved log). */
void toolmem_load(srv_toolmem *tm, const char *const *ids, size_t n_ids, const char *text, size_t len, bool thinking);
/* A hook called by every toolmem_put (the disk cache's tool log). */
void toolmem_set_persist(srv_toolmem *tm, void (*cb)(void *ud, const char *const *ids, size_t n_ids,
                                                     const char *text, size_t len, bool thinking), void *ud);

/* ---- rendered prompt ---- */
typedef struct {
    char *text;
    size_t len;
    ds4_span *spans; /* client text, tokenized plain */
    size_t n_spans;
    int32_t *ids;
    uint32_t *offs; /* [n + 1] byte offset of each token, offs[n] = len */
    uint32_t n;
    bool thinking;
    bool continues; /* ends inside an assistant turn (prefill): the model continues its text */
    int n_replayed; /* assistant turns replayed byte-exactly */
} srv_prompt;

bool srv_render(const srv_request *r, srv_toolmem *tm, const ds4_tokenizer *tok, const srv_config *cfg,
                srv_prompt *out, char *err, size_t errlen);
void srv_prompt_free(srv_prompt *p);
/* Token offsets of ids (cumulative byte lengths); offs has n + 1 entries. */
void srv_token_offsets(const ds4_tokenizer *tok, const int32_t *ids, uint32_t n, uint32_t start, uint32_t *offs);

/* ---- a job: one request on the engine ---- */
typedef enum {
    EV_PROGRESS,   /* prefill progress: index = done, len = total */
    EV_REASONING,  /* text */
    EV_CONTENT,    /* text */
    EV_TOOL_BEGIN, /* index, id, name */
    EV_TOOL_ARGS,  /* index, id, text: the next fragment of the arguments */
    EV_TOOL_CALL,  /* index, id, name, args (the final JSON object text),
                    * text: the fragment that completes what EV_TOOL_ARGS sent */
    EV_DONE,
} srv_ev_kind;

typedef struct {
    srv_ev_kind kind;
    char *text; /* valid UTF-8 */
    size_t len;
    int index;
    char *id, *name, *args;
} srv_event;

typedef struct srv_job {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int refs;
    srv_request *req;
    srv_prompt prompt;
    char id[48]; /* request id for logs */
    const char *path;
    /* events, appended by the engine, read by the connection */
    srv_event *ev;
    size_t n_ev, cap_ev;
    bool done;
    atomic_bool cancel;
    /* results (valid once done) */
    const char *finish; /* stop, length, tool_calls, error, cancelled */
    const char *stop_seq;
    uint32_t prompt_tokens, cached_tokens, completion_tokens, reasoning_tokens;
    const char *cache_source; /* "live", "disk", "none" */
    int err_status;
    char err[256];
    double t_queued, t_start, t_prefill, t_first, t_end;
    struct srv_job *next;
} srv_job;

srv_job *job_new(srv_request *req);
void job_unref(srv_job *j); /* frees the request too */
void job_push(srv_job *j, srv_event ev);

/* ---- engine ---- */
typedef struct srv_engine srv_engine;
typedef struct srv_kvdisk srv_kvdisk;

srv_engine *engine_start(const srv_config *cfg, ds4_model *m, const ds4_tokenizer *tok, srv_toolmem *tm,
                         srv_kvdisk *kv, char *err, size_t errlen);
/* Queues a job (takes a reference). False when the queue is full. */
bool engine_submit(srv_engine *e, srv_job *j);
int engine_queue_len(srv_engine *e);
/* Cancels the running and queued jobs, saves the live session to the disk
 * cache, stops the worker. */
void engine_stop(srv_engine *e);
void engine_free(srv_engine *e);

/* ---- http (libmicrohttpd) ---- */
bool http_start(const srv_config *cfg, srv_engine *engine, srv_toolmem *tm, srv_kvdisk *kv, const ds4_tokenizer *tok,
                int *port_out, char *err, size_t errlen);
void http_quiesce(void); /* stop accepting connections */
void http_stop(void);

/* ---- disk KV cache ---- */
typedef struct {
    uint64_t lookups, hits, hit_tokens, saves, save_bytes, evictions, rejected;
} srv_kv_stats;

srv_kvdisk *kvdisk_open(const char *dir, uint64_t budget_bytes, uint32_t min_tokens, const char *model_path,
                        srv_toolmem *tm, char *err, size_t errlen);
void kvdisk_close(srv_kvdisk *kv);
/* The longest cached prefix of text[0..len) (by bytes); its token count in
 * *n_tokens and its path (malloc'd) or NULL. The entry is pinned until the
 * next lookup so that an eviction during this request cannot remove it. */
char *kvdisk_lookup(srv_kvdisk *kv, const char *text, size_t len, uint32_t *n_tokens, size_t *text_len);
/* Marks the entry of path as used (hits, last use). */
void kvdisk_touch(srv_kvdisk *kv, const char *path);
/* Saves the session under its text; reason: "cold", "continued", "evict", "shutdown". */
bool kvdisk_save(srv_kvdisk *kv, ds4_session *s, const char *text, size_t len, const char *reason);
/* Reports a file that failed to load (corrupt/foreign) and drops it. */
void kvdisk_reject(srv_kvdisk *kv, const char *path, const char *why);
srv_kv_stats kvdisk_stats(srv_kvdisk *kv);

/* ---- output formats ---- */
typedef struct srv_fmt srv_fmt;
srv_fmt *fmt_new(const srv_request *req, const srv_job *job);
void fmt_free(srv_fmt *f);
/* Streams: SSE bytes for one event (and accumulates it). */
void fmt_stream_event(srv_fmt *f, const srv_event *ev, const srv_job *job, sbuf *out);
/* Streams: what opens the stream (sent before the first event). */
void fmt_stream_open(srv_fmt *f, const srv_job *job, sbuf *out);
/* Streams: the closing events once the job is done (usage, [DONE], ...). */
void fmt_stream_close(srv_fmt *f, const srv_job *job, sbuf *out);
/* Streams: a keep-alive that the API's clients ignore. */
void fmt_keepalive(srv_fmt *f, sbuf *out);
/* Non-streaming: accumulate an event. */
void fmt_accumulate(srv_fmt *f, const srv_event *ev);
/* Non-streaming: the response body. */
char *fmt_final_json(srv_fmt *f, const srv_job *job);
/* Error body in the API's shape. */
char *fmt_error_json(srv_api api, int status, const char *message);
/* In-stream error event in the API's shape. */
void fmt_stream_error(srv_fmt *f, const srv_job *job, const char *message, sbuf *out);

/* Counts for /v1/messages/count_tokens and friends. */
char *fmt_count_tokens_json(uint32_t n);

/* ---- request parsing ---- */
/* Parses body into *r for api. On failure: false, *status (400, 413, ...)
 * and a message. */
bool srv_parse_request(srv_api api, const char *body, size_t len, const srv_config *cfg, srv_request *r,
                       int *status, char *err, size_t errlen);

/* ---- tool-call arguments while they stream (toolargs.c) ---- */
/* s[0..n): an invoke from "<｜DSML｜invoke" on. Writes the JSON prefix of its
 * complete parameters ("{" "k": v, ...) to out; returns how many. */
int dsml_args_prefix(const char *s, size_t n, sbuf *out);

/* ---- trace ---- */
void trace_open(const char *path);
void trace_write(const char *job_id, const char *what, const char *text, size_t len);

#endif
