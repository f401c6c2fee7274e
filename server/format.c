/* format.c - a job's events as each API's response body or SSE stream.
 *
 *   chat/completions  chat.completion / chat.completion.chunk: a first delta
 *                     {"role":"assistant"}, reasoning as
 *                     delta.reasoning_content, text as delta.content, tool
 *                     calls as delta.tool_calls (id, type and name when the
 *                     invoke header is read, then the arguments parameter by
 *                     parameter), a last
 *                     chunk with finish_reason, an optional usage chunk
 *                     (stream_options.include_usage), then "data: [DONE]"
 *   completions       text_completion objects, text = the answer
 *   responses         response.created, response.in_progress, per output item
 *                     (reasoning, message, function_call) its .added / delta /
 *                     .done events, then response.completed or
 *                     response.incomplete carrying the whole response
 *   messages          message_start, content blocks (thinking, text, tool_use)
 *                     with thinking_delta / signature_delta / text_delta /
 *                     input_json_delta, message_delta (stop_reason, usage),
 *                     message_stop; "ping" events as keep-alive
 *
 * Every event is also accumulated, so the non-streaming body and the final
 * Responses event are built from the same state.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server.h"

typedef enum { IT_NONE, IT_REASONING, IT_MESSAGE, IT_CALL } item_kind;

typedef struct {
    item_kind kind;
    char id[64];
    char call_id[64];
    char *name;
    sbuf text; /* reasoning / message text / arguments */
    bool done;
} item_t;

struct srv_fmt {
    srv_api api;
    const char *model;
    long long created;
    char id[64];
    bool include_usage;
    sbuf reasoning, content;
    item_t *items; /* in output order */
    int n_items, cap_items;
    int open; /* index of the open item, -1 none */
    int seq;  /* responses sequence_number */
    int block_index; /* messages: next content block index */
};

srv_fmt *fmt_new(const srv_request *req, const srv_job *job) {
    srv_fmt *f = calloc(1, sizeof *f);
    f->api = req->api;
    f->model = req->model;
    f->created = wall_s();
    f->include_usage = req->include_usage;
    f->open = -1;
    const char *prefix = req->api == API_CHAT ? "chatcmpl-" : req->api == API_COMPLETIONS ? "cmpl-"
                         : req->api == API_RESPONSES ? "resp_" : "msg_";
    random_id(f->id, sizeof f->id, prefix, 12);
    (void)job;
    return f;
}

void fmt_free(srv_fmt *f) {
    if (!f) return;
    for (int i = 0; i < f->n_items; i++) {
        free(f->items[i].name);
        sb_free(&f->items[i].text);
    }
    free(f->items);
    sb_free(&f->reasoning);
    sb_free(&f->content);
    free(f);
}

static item_t *item_add(srv_fmt *f, item_kind kind) {
    if (f->n_items == f->cap_items) {
        f->cap_items = f->cap_items ? f->cap_items * 2 : 8;
        f->items = realloc(f->items, (size_t)f->cap_items * sizeof *f->items);
    }
    item_t *it = &f->items[f->n_items++];
    memset(it, 0, sizeof *it);
    it->kind = kind;
    const char *prefix = kind == IT_REASONING ? "rs_" : kind == IT_MESSAGE ? "msg_" : "fc_";
    random_id(it->id, sizeof it->id, prefix, 12);
    return it;
}

static item_t *find_call(srv_fmt *f, const char *call_id) {
    for (int i = 0; i < f->n_items; i++)
        if (f->items[i].kind == IT_CALL && !strcmp(f->items[i].call_id, call_id)) return &f->items[i];
    return NULL;
}

/* Accumulate; returns the item the event went to. */
static item_t *accumulate(srv_fmt *f, const srv_event *ev, bool *opened) {
    *opened = false;
    item_t *it = NULL;
    switch (ev->kind) {
    case EV_REASONING:
    case EV_CONTENT: {
        item_kind k = ev->kind == EV_REASONING ? IT_REASONING : IT_MESSAGE;
        sb_put(ev->kind == EV_REASONING ? &f->reasoning : &f->content, ev->text, ev->len);
        if (f->open >= 0 && f->items[f->open].kind == k) {
            it = &f->items[f->open];
        } else {
            it = item_add(f, k);
            f->open = f->n_items - 1;
            *opened = true;
        }
        sb_put(&it->text, ev->text, ev->len);
        return it;
    }
    case EV_TOOL_BEGIN:
    case EV_TOOL_ARGS:
    case EV_TOOL_CALL:
        it = find_call(f, ev->id);
        if (!it) {
            it = item_add(f, IT_CALL);
            snprintf(it->call_id, sizeof it->call_id, "%s", ev->id);
            it->name = strdup(ev->name ? ev->name : "");
            if (ev->kind == EV_TOOL_ARGS) it->name[0] = 0;
            f->open = f->n_items - 1;
            *opened = true;
        }
        if (ev->kind == EV_TOOL_CALL) {
            it->text.n = 0;
            sb_puts(&it->text, ev->args ? ev->args : "{}");
            it->done = true;
        }
        return it;
    default:
        return NULL;
    }
}

void fmt_accumulate(srv_fmt *f, const srv_event *ev) {
    bool opened;
    accumulate(f, ev, &opened);
}

/* ------------------------------------------------------------------------ */
/* shared pieces */

static const char *openai_finish(const srv_job *j) {
    const char *fr = j->finish ? j->finish : "stop";
    if (!strcmp(fr, "length") || !strcmp(fr, "tool_calls")) return fr;
    return "stop";
}

static const char *anthropic_stop(const srv_job *j) {
    const char *fr = j->finish ? j->finish : "stop";
    if (!strcmp(fr, "length")) return "max_tokens";
    if (!strcmp(fr, "tool_calls")) return "tool_use";
    if (j->stop_seq) return "stop_sequence";
    return "end_turn";
}

static cJSON *usage_json(srv_api api, const srv_job *j) {
    cJSON *u = cJSON_CreateObject();
    if (api == API_MESSAGES) {
        cJSON_AddNumberToObject(u, "input_tokens", j->prompt_tokens - j->cached_tokens);
        cJSON_AddNumberToObject(u, "cache_creation_input_tokens", 0);
        cJSON_AddNumberToObject(u, "cache_read_input_tokens", j->cached_tokens);
        cJSON_AddNumberToObject(u, "output_tokens", j->completion_tokens);
    } else if (api == API_RESPONSES) {
        cJSON_AddNumberToObject(u, "input_tokens", j->prompt_tokens);
        cJSON_AddNumberToObject(cJSON_AddObjectToObject(u, "input_tokens_details"), "cached_tokens", j->cached_tokens);
        cJSON_AddNumberToObject(u, "output_tokens", j->completion_tokens);
        cJSON_AddNumberToObject(cJSON_AddObjectToObject(u, "output_tokens_details"), "reasoning_tokens",
                                j->reasoning_tokens);
        cJSON_AddNumberToObject(u, "total_tokens", j->prompt_tokens + j->completion_tokens);
    } else {
        cJSON_AddNumberToObject(u, "prompt_tokens", j->prompt_tokens);
        cJSON_AddNumberToObject(u, "completion_tokens", j->completion_tokens);
        cJSON_AddNumberToObject(u, "total_tokens", j->prompt_tokens + j->completion_tokens);
        cJSON_AddNumberToObject(cJSON_AddObjectToObject(u, "prompt_tokens_details"), "cached_tokens", j->cached_tokens);
        cJSON_AddNumberToObject(cJSON_AddObjectToObject(u, "completion_tokens_details"), "reasoning_tokens",
                                j->reasoning_tokens);
    }
    return u;
}

static void sse(sbuf *out, const char *event, cJSON *obj) {
    char *s = cJSON_PrintUnformatted(obj);
    if (event) sb_printf(out, "event: %s\n", event);
    sb_puts(out, "data: ");
    sb_puts(out, s);
    sb_puts(out, "\n\n");
    free(s);
    cJSON_Delete(obj);
}

static char *print_delete(cJSON *o) {
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

/* ------------------------------------------------------------------------ */
/* chat/completions and completions */

static cJSON *chunk_base(srv_fmt *f) {
    cJSON *c = cJSON_CreateObject();
    cJSON_AddStringToObject(c, "id", f->id);
    cJSON_AddStringToObject(c, "object", f->api == API_CHAT ? "chat.completion.chunk" : "text_completion");
    cJSON_AddNumberToObject(c, "created", (double)f->created);
    cJSON_AddStringToObject(c, "model", f->model);
    cJSON_AddStringToObject(c, "system_fingerprint", "ds4");
    return c;
}

static void chat_chunk(srv_fmt *f, sbuf *out, cJSON *delta, const char *finish) {
    cJSON *c = chunk_base(f);
    cJSON *ch = cJSON_AddArrayToObject(c, "choices");
    cJSON *choice = cJSON_CreateObject();
    cJSON_AddNumberToObject(choice, "index", 0);
    if (f->api == API_CHAT) {
        cJSON_AddItemToObject(choice, "delta", delta);
    } else {
        const cJSON *t = jget(delta, "content");
        cJSON_AddStringToObject(choice, "text", cJSON_IsString(t) ? t->valuestring : "");
        cJSON_Delete(delta);
    }
    cJSON_AddNullToObject(choice, "logprobs");
    if (finish) cJSON_AddStringToObject(choice, "finish_reason", finish); else cJSON_AddNullToObject(choice, "finish_reason");
    cJSON_AddItemToArray(ch, choice);
    sse(out, NULL, c);
}

static void chat_event(srv_fmt *f, const srv_event *ev, item_t *it, bool opened, sbuf *out) {
    cJSON *d = cJSON_CreateObject();
    if (ev->kind == EV_REASONING) {
        if (f->api == API_COMPLETIONS) {
            cJSON_Delete(d);
            return;
        }
        jadd_strn(d, "reasoning_content", ev->text, ev->len);
    } else if (ev->kind == EV_CONTENT) {
        jadd_strn(d, "content", ev->text, ev->len);
    } else {
        if (f->api == API_COMPLETIONS) {
            cJSON_Delete(d);
            return;
        }
        int index = 0;
        for (int i = 0; i < f->n_items; i++) {
            if (&f->items[i] == it) break;
            if (f->items[i].kind == IT_CALL) index++;
        }
        cJSON *calls = cJSON_AddArrayToObject(d, "tool_calls");
        cJSON *c = cJSON_CreateObject();
        cJSON_AddNumberToObject(c, "index", index);
        cJSON *fn = cJSON_CreateObject();
        if (opened) {
            cJSON_AddStringToObject(c, "id", it->call_id);
            cJSON_AddStringToObject(c, "type", "function");
            cJSON_AddStringToObject(fn, "name", it->name);
            cJSON_AddStringToObject(fn, "arguments", "");
        }
        if (ev->kind != EV_TOOL_BEGIN) { /* the next fragment (EV_TOOL_CALL: the last one) */
            if (!opened && !ev->len) {
                cJSON_Delete(fn);
                cJSON_Delete(c);
                cJSON_Delete(d);
                return;
            }
            cJSON_DeleteItemFromObject(fn, "arguments");
            cJSON_AddStringToObject(fn, "arguments", ev->text ? ev->text : "");
        }
        cJSON_AddItemToObject(c, "function", fn);
        cJSON_AddItemToArray(calls, c);
    }
    chat_chunk(f, out, d, NULL);
}

static char *chat_final(srv_fmt *f, const srv_job *j) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", f->id);
    cJSON_AddStringToObject(o, "object", f->api == API_CHAT ? "chat.completion" : "text_completion");
    cJSON_AddNumberToObject(o, "created", (double)f->created);
    cJSON_AddStringToObject(o, "model", f->model);
    cJSON_AddStringToObject(o, "system_fingerprint", "ds4");
    cJSON *choice = cJSON_CreateObject();
    cJSON_AddNumberToObject(choice, "index", 0);
    if (f->api == API_CHAT) {
        cJSON *m = cJSON_AddObjectToObject(choice, "message");
        cJSON_AddStringToObject(m, "role", "assistant");
        int n_calls = 0;
        for (int i = 0; i < f->n_items; i++) n_calls += f->items[i].kind == IT_CALL;
        if (f->content.n || !n_calls) jadd_strn(m, "content", f->content.p, f->content.n);
        else cJSON_AddNullToObject(m, "content");
        if (f->reasoning.n) jadd_strn(m, "reasoning_content", f->reasoning.p, f->reasoning.n);
        if (n_calls) {
            cJSON *calls = cJSON_AddArrayToObject(m, "tool_calls");
            for (int i = 0; i < f->n_items; i++) {
                item_t *it = &f->items[i];
                if (it->kind != IT_CALL) continue;
                cJSON *c = cJSON_CreateObject();
                cJSON_AddStringToObject(c, "id", it->call_id);
                cJSON_AddStringToObject(c, "type", "function");
                cJSON *fn = cJSON_AddObjectToObject(c, "function");
                cJSON_AddStringToObject(fn, "name", it->name);
                cJSON_AddStringToObject(fn, "arguments", it->text.n ? it->text.p : "{}");
                cJSON_AddItemToArray(calls, c);
            }
        }
    } else {
        jadd_strn(choice, "text", f->content.p, f->content.n);
        if (f->reasoning.n) jadd_strn(choice, "reasoning_content", f->reasoning.p, f->reasoning.n);
    }
    cJSON_AddNullToObject(choice, "logprobs");
    cJSON_AddStringToObject(choice, "finish_reason", openai_finish(j));
    cJSON_AddItemToArray(cJSON_AddArrayToObject(o, "choices"), choice);
    cJSON_AddItemToObject(o, "usage", usage_json(f->api, j));
    return print_delete(o);
}

/* ------------------------------------------------------------------------ */
/* responses */

static void resp_ev(srv_fmt *f, sbuf *out, const char *type, cJSON *o) {
    cJSON *e = cJSON_CreateObject();
    cJSON_AddStringToObject(e, "type", type);
    cJSON_AddNumberToObject(e, "sequence_number", f->seq++);
    cJSON *c = o ? o->child : NULL;
    while (c) { /* move o's members after "type" */
        cJSON *next = c->next;
        cJSON_AddItemToObject(e, c->string, cJSON_DetachItemViaPointer(o, c));
        c = next;
    }
    cJSON_Delete(o);
    sse(out, type, e);
}

static cJSON *resp_item_json(const item_t *it, bool final) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", it->id);
    if (it->kind == IT_REASONING) {
        cJSON_AddStringToObject(o, "type", "reasoning");
        cJSON *sum = cJSON_AddArrayToObject(o, "summary");
        if (final) {
            cJSON *p = cJSON_CreateObject();
            cJSON_AddStringToObject(p, "type", "summary_text");
            jadd_strn(p, "text", it->text.p, it->text.n);
            cJSON_AddItemToArray(sum, p);
            cJSON *content = cJSON_AddArrayToObject(o, "content");
            p = cJSON_CreateObject();
            cJSON_AddStringToObject(p, "type", "reasoning_text");
            jadd_strn(p, "text", it->text.p, it->text.n);
            cJSON_AddItemToArray(content, p);
        }
    } else if (it->kind == IT_MESSAGE) {
        cJSON_AddStringToObject(o, "type", "message");
        cJSON_AddStringToObject(o, "status", final ? "completed" : "in_progress");
        cJSON_AddStringToObject(o, "role", "assistant");
        cJSON *content = cJSON_AddArrayToObject(o, "content");
        if (final) {
            cJSON *p = cJSON_CreateObject();
            cJSON_AddStringToObject(p, "type", "output_text");
            jadd_strn(p, "text", it->text.p, it->text.n);
            cJSON_AddArrayToObject(p, "annotations");
            cJSON_AddItemToArray(content, p);
        }
    } else {
        cJSON_AddStringToObject(o, "type", "function_call");
        cJSON_AddStringToObject(o, "status", final ? "completed" : "in_progress");
        cJSON_AddStringToObject(o, "call_id", it->call_id);
        cJSON_AddStringToObject(o, "name", it->name ? it->name : "");
        cJSON_AddStringToObject(o, "arguments", final && it->text.n ? it->text.p : final ? "{}" : "");
    }
    return o;
}

static cJSON *resp_object(srv_fmt *f, const srv_job *j, const char *status) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", f->id);
    cJSON_AddStringToObject(o, "object", "response");
    cJSON_AddNumberToObject(o, "created_at", (double)f->created);
    cJSON_AddStringToObject(o, "status", status);
    cJSON_AddStringToObject(o, "model", f->model);
    cJSON *out = cJSON_AddArrayToObject(o, "output");
    bool final = strcmp(status, "in_progress") != 0;
    if (final)
        for (int i = 0; i < f->n_items; i++) cJSON_AddItemToArray(out, resp_item_json(&f->items[i], true));
    cJSON_AddNullToObject(o, "error");
    if (!strcmp(status, "incomplete")) {
        cJSON *d = cJSON_AddObjectToObject(o, "incomplete_details");
        cJSON_AddStringToObject(d, "reason", "max_output_tokens");
    } else {
        cJSON_AddNullToObject(o, "incomplete_details");
    }
    cJSON_AddBoolToObject(o, "parallel_tool_calls", true);
    cJSON_AddStringToObject(o, "tool_choice", "auto");
    cJSON_AddArrayToObject(o, "tools");
    if (final && j) cJSON_AddItemToObject(o, "usage", usage_json(API_RESPONSES, j));
    return o;
}

static const char *resp_status(const srv_job *j) {
    return j->finish && !strcmp(j->finish, "length") ? "incomplete" : "completed";
}

static void resp_close_item(srv_fmt *f, int idx, sbuf *out) {
    item_t *it = &f->items[idx];
    cJSON *o;
    if (it->kind == IT_REASONING) {
        o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "item_id", it->id);
        cJSON_AddNumberToObject(o, "output_index", idx);
        cJSON_AddNumberToObject(o, "summary_index", 0);
        jadd_strn(o, "text", it->text.p, it->text.n);
        resp_ev(f, out, "response.reasoning_summary_text.done", o);
        o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "item_id", it->id);
        cJSON_AddNumberToObject(o, "output_index", idx);
        cJSON_AddNumberToObject(o, "summary_index", 0);
        cJSON *p = cJSON_AddObjectToObject(o, "part");
        cJSON_AddStringToObject(p, "type", "summary_text");
        jadd_strn(p, "text", it->text.p, it->text.n);
        resp_ev(f, out, "response.reasoning_summary_part.done", o);
    } else if (it->kind == IT_MESSAGE) {
        o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "item_id", it->id);
        cJSON_AddNumberToObject(o, "output_index", idx);
        cJSON_AddNumberToObject(o, "content_index", 0);
        jadd_strn(o, "text", it->text.p, it->text.n);
        cJSON_AddArrayToObject(o, "logprobs");
        resp_ev(f, out, "response.output_text.done", o);
        o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "item_id", it->id);
        cJSON_AddNumberToObject(o, "output_index", idx);
        cJSON_AddNumberToObject(o, "content_index", 0);
        cJSON *p = cJSON_AddObjectToObject(o, "part");
        cJSON_AddStringToObject(p, "type", "output_text");
        jadd_strn(p, "text", it->text.p, it->text.n);
        cJSON_AddArrayToObject(p, "annotations");
        resp_ev(f, out, "response.content_part.done", o);
    } else {
        o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "item_id", it->id);
        cJSON_AddNumberToObject(o, "output_index", idx);
        cJSON_AddStringToObject(o, "name", it->name ? it->name : "");
        cJSON_AddStringToObject(o, "arguments", it->text.n ? it->text.p : "{}");
        resp_ev(f, out, "response.function_call_arguments.done", o);
    }
    o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "output_index", idx);
    cJSON_AddItemToObject(o, "item", resp_item_json(it, true));
    resp_ev(f, out, "response.output_item.done", o);
}

static void resp_event(srv_fmt *f, const srv_event *ev, sbuf *out) {
    int prev_open = f->open;
    bool opened;
    item_t *it = accumulate(f, ev, &opened);
    if (!it) return;
    int idx = (int)(it - f->items);
    if (opened && prev_open >= 0 && prev_open != idx && !(f->items[prev_open].kind == IT_CALL && f->items[prev_open].done))
        resp_close_item(f, prev_open, out);
    cJSON *o;
    if (opened) {
        o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "output_index", idx);
        cJSON_AddItemToObject(o, "item", resp_item_json(it, false));
        resp_ev(f, out, "response.output_item.added", o);
        if (it->kind != IT_CALL) {
            o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "item_id", it->id);
            cJSON_AddNumberToObject(o, "output_index", idx);
            cJSON_AddNumberToObject(o, it->kind == IT_REASONING ? "summary_index" : "content_index", 0);
            cJSON *p = cJSON_AddObjectToObject(o, "part");
            cJSON_AddStringToObject(p, "type", it->kind == IT_REASONING ? "summary_text" : "output_text");
            cJSON_AddStringToObject(p, "text", "");
            if (it->kind == IT_MESSAGE) cJSON_AddArrayToObject(p, "annotations");
            resp_ev(f, out, it->kind == IT_REASONING ? "response.reasoning_summary_part.added" : "response.content_part.added", o);
        }
    }
    o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "item_id", it->id);
    cJSON_AddNumberToObject(o, "output_index", idx);
    if (ev->kind == EV_REASONING) {
        cJSON_AddNumberToObject(o, "summary_index", 0);
        jadd_strn(o, "delta", ev->text, ev->len);
        resp_ev(f, out, "response.reasoning_summary_text.delta", o);
    } else if (ev->kind == EV_CONTENT) {
        cJSON_AddNumberToObject(o, "content_index", 0);
        jadd_strn(o, "delta", ev->text, ev->len);
        cJSON_AddArrayToObject(o, "logprobs");
        resp_ev(f, out, "response.output_text.delta", o);
    } else if (ev->kind == EV_TOOL_ARGS || ev->kind == EV_TOOL_CALL) {
        if (ev->len) {
            cJSON_AddStringToObject(o, "delta", ev->text);
            resp_ev(f, out, "response.function_call_arguments.delta", o);
        } else {
            cJSON_Delete(o);
        }
        if (ev->kind == EV_TOOL_CALL) {
            resp_close_item(f, idx, out);
            f->open = -1;
        }
    } else {
        cJSON_Delete(o);
    }
}

/* ------------------------------------------------------------------------ */
/* messages (Anthropic) */

static void anth_ev(sbuf *out, const char *type, cJSON *o) {
    cJSON *e = cJSON_CreateObject();
    cJSON_AddStringToObject(e, "type", type);
    cJSON *c = o ? o->child : NULL;
    while (c) {
        cJSON *next = c->next;
        cJSON_AddItemToObject(e, c->string, cJSON_DetachItemViaPointer(o, c));
        c = next;
    }
    cJSON_Delete(o);
    sse(out, type, e);
}

static void anth_close_block(srv_fmt *f, int idx, sbuf *out) {
    item_t *it = &f->items[idx];
    int block = idx; /* one block per item, in order */
    if (it->kind == IT_REASONING) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "index", block);
        cJSON *d = cJSON_AddObjectToObject(o, "delta");
        cJSON_AddStringToObject(d, "type", "signature_delta");
        cJSON_AddStringToObject(d, "signature", "ds4");
        anth_ev(out, "content_block_delta", o);
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "index", block);
    anth_ev(out, "content_block_stop", o);
}

static void anth_event(srv_fmt *f, const srv_event *ev, sbuf *out) {
    int prev_open = f->open;
    bool opened;
    item_t *it = accumulate(f, ev, &opened);
    if (!it) return;
    int idx = (int)(it - f->items);
    if (opened && prev_open >= 0 && prev_open != idx && !(f->items[prev_open].kind == IT_CALL && f->items[prev_open].done))
        anth_close_block(f, prev_open, out);
    cJSON *o;
    if (opened) {
        o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "index", idx);
        cJSON *b = cJSON_AddObjectToObject(o, "content_block");
        if (it->kind == IT_REASONING) {
            cJSON_AddStringToObject(b, "type", "thinking");
            cJSON_AddStringToObject(b, "thinking", "");
            cJSON_AddStringToObject(b, "signature", "");
        } else if (it->kind == IT_MESSAGE) {
            cJSON_AddStringToObject(b, "type", "text");
            cJSON_AddStringToObject(b, "text", "");
        } else {
            cJSON_AddStringToObject(b, "type", "tool_use");
            cJSON_AddStringToObject(b, "id", it->call_id);
            cJSON_AddStringToObject(b, "name", it->name);
            cJSON_AddObjectToObject(b, "input");
        }
        anth_ev(out, "content_block_start", o);
    }
    o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "index", idx);
    cJSON *d = cJSON_AddObjectToObject(o, "delta");
    if (ev->kind == EV_REASONING) {
        cJSON_AddStringToObject(d, "type", "thinking_delta");
        jadd_strn(d, "thinking", ev->text, ev->len);
    } else if (ev->kind == EV_CONTENT) {
        cJSON_AddStringToObject(d, "type", "text_delta");
        jadd_strn(d, "text", ev->text, ev->len);
    } else if ((ev->kind == EV_TOOL_ARGS || ev->kind == EV_TOOL_CALL) && ev->len) {
        cJSON_AddStringToObject(d, "type", "input_json_delta");
        cJSON_AddStringToObject(d, "partial_json", ev->text);
    } else {
        cJSON_Delete(o);
        o = NULL;
    }
    if (o) anth_ev(out, "content_block_delta", o);
    if (ev->kind == EV_TOOL_CALL) {
        anth_close_block(f, idx, out);
        f->open = -1;
    }
}

static cJSON *anth_message(srv_fmt *f, const srv_job *j, bool final) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", f->id);
    cJSON_AddStringToObject(o, "type", "message");
    cJSON_AddStringToObject(o, "role", "assistant");
    cJSON_AddStringToObject(o, "model", f->model);
    cJSON *content = cJSON_AddArrayToObject(o, "content");
    if (final) {
        for (int i = 0; i < f->n_items; i++) {
            item_t *it = &f->items[i];
            cJSON *b = cJSON_CreateObject();
            if (it->kind == IT_REASONING) {
                cJSON_AddStringToObject(b, "type", "thinking");
                jadd_strn(b, "thinking", it->text.p, it->text.n);
                cJSON_AddStringToObject(b, "signature", "ds4");
            } else if (it->kind == IT_MESSAGE) {
                cJSON_AddStringToObject(b, "type", "text");
                jadd_strn(b, "text", it->text.p, it->text.n);
            } else {
                cJSON_AddStringToObject(b, "type", "tool_use");
                cJSON_AddStringToObject(b, "id", it->call_id);
                cJSON_AddStringToObject(b, "name", it->name);
                cJSON *in = cJSON_Parse(it->text.n ? it->text.p : "{}");
                cJSON_AddItemToObject(b, "input", in ? in : cJSON_CreateObject());
            }
            cJSON_AddItemToArray(content, b);
        }
        cJSON_AddStringToObject(o, "stop_reason", anthropic_stop(j));
        if (j->stop_seq) cJSON_AddStringToObject(o, "stop_sequence", j->stop_seq);
        else cJSON_AddNullToObject(o, "stop_sequence");
    } else {
        cJSON_AddNullToObject(o, "stop_reason");
        cJSON_AddNullToObject(o, "stop_sequence");
    }
    cJSON_AddItemToObject(o, "usage", usage_json(API_MESSAGES, j));
    return o;
}

/* ------------------------------------------------------------------------ */
/* entry points */

void fmt_stream_open(srv_fmt *f, const srv_job *j, sbuf *out) {
    if (f->api == API_CHAT) {
        cJSON *d = cJSON_CreateObject();
        cJSON_AddStringToObject(d, "role", "assistant");
        cJSON_AddStringToObject(d, "content", "");
        chat_chunk(f, out, d, NULL);
    } else if (f->api == API_RESPONSES) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddItemToObject(o, "response", resp_object(f, NULL, "in_progress"));
        resp_ev(f, out, "response.created", o);
        o = cJSON_CreateObject();
        cJSON_AddItemToObject(o, "response", resp_object(f, NULL, "in_progress"));
        resp_ev(f, out, "response.in_progress", o);
    } else if (f->api == API_MESSAGES) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddItemToObject(o, "message", anth_message(f, j, false));
        anth_ev(out, "message_start", o);
    }
}

void fmt_stream_event(srv_fmt *f, const srv_event *ev, const srv_job *j, sbuf *out) {
    (void)j;
    if (ev->kind == EV_PROGRESS || ev->kind == EV_DONE) return;
    if (f->api == API_CHAT || f->api == API_COMPLETIONS) {
        bool opened;
        item_t *it = accumulate(f, ev, &opened);
        chat_event(f, ev, it, opened, out);
    } else if (f->api == API_RESPONSES) {
        resp_event(f, ev, out);
    } else {
        anth_event(f, ev, out);
    }
}

void fmt_stream_close(srv_fmt *f, const srv_job *j, sbuf *out) {
    if (f->api == API_CHAT || f->api == API_COMPLETIONS) {
        chat_chunk(f, out, cJSON_CreateObject(), openai_finish(j));
        if (f->include_usage) {
            cJSON *c = chunk_base(f);
            cJSON_AddArrayToObject(c, "choices");
            cJSON_AddItemToObject(c, "usage", usage_json(f->api, j));
            sse(out, NULL, c);
        }
        sb_puts(out, "data: [DONE]\n\n");
    } else if (f->api == API_RESPONSES) {
        if (f->open >= 0 && !(f->items[f->open].kind == IT_CALL && f->items[f->open].done)) resp_close_item(f, f->open, out);
        f->open = -1;
        const char *st = resp_status(j);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddItemToObject(o, "response", resp_object(f, j, st));
        resp_ev(f, out, !strcmp(st, "completed") ? "response.completed" : "response.incomplete", o);
    } else {
        if (f->open >= 0 && !(f->items[f->open].kind == IT_CALL && f->items[f->open].done)) anth_close_block(f, f->open, out);
        f->open = -1;
        cJSON *o = cJSON_CreateObject();
        cJSON *d = cJSON_AddObjectToObject(o, "delta");
        cJSON_AddStringToObject(d, "stop_reason", anthropic_stop(j));
        if (j->stop_seq) cJSON_AddStringToObject(d, "stop_sequence", j->stop_seq);
        else cJSON_AddNullToObject(d, "stop_sequence");
        cJSON_AddItemToObject(o, "usage", usage_json(API_MESSAGES, j));
        anth_ev(out, "message_delta", o);
        anth_ev(out, "message_stop", cJSON_CreateObject());
    }
}

void fmt_keepalive(srv_fmt *f, sbuf *out) {
    if (f->api == API_MESSAGES) sb_puts(out, "event: ping\ndata: {\"type\":\"ping\"}\n\n");
    else sb_puts(out, ": prefill\n\n");
}

char *fmt_final_json(srv_fmt *f, const srv_job *j) {
    if (f->api == API_CHAT || f->api == API_COMPLETIONS) return chat_final(f, j);
    if (f->api == API_RESPONSES) return print_delete(resp_object(f, j, resp_status(j)));
    return print_delete(anth_message(f, j, true));
}

char *fmt_error_json(srv_api api, int status, const char *message) {
    cJSON *o = cJSON_CreateObject();
    if (api == API_MESSAGES) {
        const char *type = status == 401 ? "authentication_error" : status == 403 ? "permission_error"
                           : status == 404 ? "not_found_error" : status == 413 ? "request_too_large"
                           : status == 429 ? "rate_limit_error" : status == 503 || status == 529 ? "overloaded_error"
                           : status >= 500 ? "api_error" : "invalid_request_error";
        cJSON_AddStringToObject(o, "type", "error");
        cJSON *e = cJSON_AddObjectToObject(o, "error");
        cJSON_AddStringToObject(e, "type", type);
        jadd_strn(e, "message", message, strlen(message));
    } else {
        const char *type = status == 401 ? "authentication_error" : status == 404 ? "not_found_error"
                           : status >= 500 ? "server_error" : "invalid_request_error";
        const char *code = status == 401 ? "invalid_api_key" : status == 413 ? "request_too_large"
                           : status == 503 ? "overloaded" : NULL;
        if (status == 400 && strstr(message, "context")) code = "context_length_exceeded";
        cJSON *e = cJSON_AddObjectToObject(o, "error");
        jadd_strn(e, "message", message, strlen(message));
        cJSON_AddStringToObject(e, "type", type);
        cJSON_AddNullToObject(e, "param");
        if (code) cJSON_AddStringToObject(e, "code", code); else cJSON_AddNullToObject(e, "code");
    }
    return print_delete(o);
}

void fmt_stream_error(srv_fmt *f, const srv_job *j, const char *message, sbuf *out) {
    (void)j;
    if (f->api == API_RESPONSES) {
        cJSON *o = cJSON_CreateObject();
        cJSON *r = resp_object(f, NULL, "failed");
        cJSON_DeleteItemFromObject(r, "error");
        cJSON *e = cJSON_AddObjectToObject(r, "error");
        cJSON_AddStringToObject(e, "code", "server_error");
        jadd_strn(e, "message", message, strlen(message));
        cJSON_AddItemToObject(o, "response", r);
        resp_ev(f, out, "response.failed", o);
        return;
    }
    char *s = fmt_error_json(f->api, 500, message);
    sb_printf(out, "event: error\ndata: %s\n\n", s);
    free(s);
    if (f->api != API_MESSAGES) sb_puts(out, "data: [DONE]\n\n");
}

char *fmt_count_tokens_json(uint32_t n) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "input_tokens", n);
    return print_delete(o);
}
