/* render.c - a request's messages to the DS4 prompt text and token ids.
 *
 * The rendering itself is src/chat_template (byte-exact with DeepSeek's
 * encoder). Around it, the server:
 *   - puts the request's tools and response format (JSON schema) on the
 *     first system message (inserting an empty one when there is none), as
 *     the reference server does;
 *   - replays earlier tool-call turns byte for byte: an assistant message
 *     whose tool-call ids are in the tool memory is rendered as the exact
 *     text the model generated (reasoning, then content with the sampled DSML
 *     block) instead of canonical DSML. The exact text goes in through a
 *     random sentinel that is swapped after rendering, and it is tokenized
 *     with its DSML markers as special tokens (it is the model's own text);
 *     the tool results that follow are put in call order here, since the
 *     renderer no longer sees the calls;
 *   - renders a last assistant message without its end-of-turn token, so
 *     that the model continues it (Anthropic prefill);
 *   - tokenizes everything the client wrote as plain text (special-token
 *     strings inside contents stay text) unless --trust-content.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server.h"

#define THINK_CLOSE "</think>"

void srv_prompt_free(srv_prompt *p) {
    free(p->text);
    free(p->spans);
    free(p->ids);
    free(p->offs);
    memset(p, 0, sizeof *p);
}

void srv_token_offsets(const ds4_tokenizer *tok, const int32_t *ids, uint32_t n, uint32_t start, uint32_t *offs) {
    uint32_t o = start;
    for (uint32_t i = 0; i < n; i++) {
        offs[i] = o;
        size_t l = 0;
        ds4_token_bytes(tok, ids[i], &l);
        o += (uint32_t)l;
    }
    offs[n] = o;
}

typedef struct {
    char sentinel[48];
    char *text; /* the exact generated content (after </think>) */
    size_t len;
} replay_t;

/* Replace text[a, a + sl) by repl[0..rl) and make it non-client (special
 * tokens recognised): spans overlapping the range are cut around it. */
static void replace_range(ds4_chat_prompt *p, size_t a, size_t sl, const char *repl, size_t rl) {
    size_t nl = p->len - sl + rl;
    if (nl + 1 > p->cap) {
        p->text = realloc(p->text, nl + 1);
        if (!p->text) abort();
        p->cap = nl + 1;
    }
    memmove(p->text + a + rl, p->text + a + sl, p->len - a - sl + 1);
    memcpy(p->text + a, repl, rl);
    p->len = nl;
    long delta = (long)rl - (long)sl;
    ds4_span *out = malloc((p->n_spans * 2 + 1) * sizeof *out);
    if (!out) abort();
    size_t k = 0;
    for (size_t i = 0; i < p->n_spans; i++) {
        ds4_span s = p->spans[i];
        if (s.end <= a) {
            out[k++] = s;
        } else if (s.start >= a + sl) {
            out[k++] = (ds4_span){s.start + delta, s.end + delta};
        } else {
            if (s.start < a) out[k++] = (ds4_span){s.start, a};
            if (s.end > a + sl) out[k++] = (ds4_span){a + rl, s.end + delta};
        }
    }
    free(p->spans);
    p->spans = out;
    p->n_spans = k;
    p->cap_spans = p->n_spans * 2 + 1;
}

static int call_index(const ds4_chat_message *am, const char *id) {
    int k = 0; /* unknown ids sort first, like the reference */
    for (size_t c = 0; c < am->n_tool_calls; c++)
        if (id && am->tool_calls[c].id && !strcmp(am->tool_calls[c].id, id)) k = (int)c;
    return k;
}

/* Stable sort of the run of tool messages after an assistant turn by the
 * order of its calls. */
static void order_tool_results(ds4_chat_message *msgs, size_t n, size_t after, const ds4_chat_message *am) {
    size_t s = after + 1, e = s;
    while (e < n && !strcmp(msgs[e].role, "tool")) e++;
    for (size_t i = s + 1; i < e; i++) {
        ds4_chat_message m = msgs[i];
        int k = call_index(am, m.tool_call_id);
        size_t j = i;
        while (j > s && call_index(am, msgs[j - 1].tool_call_id) > k) {
            msgs[j] = msgs[j - 1];
            j--;
        }
        msgs[j] = m;
    }
}

/* The replay text for an assistant message, if every call id maps to the
 * same remembered turn generated in the same thinking mode. */
static char *replay_text(srv_toolmem *tm, const ds4_chat_message *m, bool thinking, size_t *len) {
    if (!tm || !m->n_tool_calls) return NULL;
    char *first = NULL;
    size_t fl = 0;
    for (size_t c = 0; c < m->n_tool_calls; c++) {
        size_t l;
        bool th;
        char *t = toolmem_get(tm, m->tool_calls[c].id, &l, &th);
        if (!t || th != thinking || (first && (l != fl || memcmp(t, first, l)))) {
            free(t);
            free(first);
            return NULL;
        }
        if (first) {
            free(t);
        } else {
            first = t;
            fl = l;
        }
    }
    *len = fl;
    return first;
}

bool srv_render(const srv_request *r, srv_toolmem *tm, const ds4_tokenizer *tok, const srv_config *cfg,
                srv_prompt *out, char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    bool thinking = r->think != DS4_THINK_NONE;
    size_t n = r->n_msgs;
    ds4_chat_message *msgs = calloc(n + 1, sizeof *msgs);
    replay_t *rp = calloc(n + 1, sizeof *rp);
    size_t n_rp = 0;
    char **own = calloc(2 * n + 2, sizeof *own);
    size_t n_own = 0;
    bool ok = false;
    ds4_chat_prompt p = {0};
    if (!msgs || !rp || !own) abort();
    size_t k = 0;
    bool sys_extras = r->tools_json || r->response_format_json;
    if (sys_extras) {
        size_t first_sys = n;
        for (size_t i = 0; i < n; i++)
            if (!strcmp(r->msgs[i].role, "system")) {
                first_sys = i;
                break;
            }
        if (first_sys == n) msgs[k++] = (ds4_chat_message){.role = "system", .content = ""};
    }
    memcpy(msgs + k, r->msgs, n * sizeof *msgs);
    n += k;
    if (sys_extras)
        for (size_t i = 0; i < n; i++)
            if (!strcmp(msgs[i].role, "system")) {
                msgs[i].tools_json = r->tools_json;
                msgs[i].response_format_json = r->response_format_json;
                break;
            }
    for (size_t i = 0; i < n; i++) {
        ds4_chat_message *m = &msgs[i];
        if (strcmp(m->role, "assistant") || !m->n_tool_calls) continue;
        size_t len;
        char *t = replay_text(tm, m, thinking, &len);
        if (!t) continue;
        own[n_own++] = t;
        const char *content = t;
        if (thinking) {
            char *close = strstr(t, THINK_CLOSE);
            if (!close || memchr(t, 0, len)) continue;
            *close = 0;
            m->reasoning_content = t;
            content = close + strlen(THINK_CLOSE);
        }
        ds4_chat_message am = *m;
        replay_t *x = &rp[n_rp++];
        random_id(x->sentinel, sizeof x->sentinel, "\x01" "ds4-replay-", 12);
        strcat(x->sentinel, "\x01");
        x->text = (char *)content;
        x->len = strlen(content);
        m->content = x->sentinel;
        m->tool_calls = NULL;
        m->n_tool_calls = 0;
        order_tool_results(msgs, n, i, &am);
    }
    /* a last assistant message is a prefix for the model to continue
     * (Anthropic prefill, DeepSeek's chat prefix completion) */
    bool continues = n > 0 && !strcmp(msgs[n - 1].role, "assistant") && !msgs[n - 1].n_tool_calls && !n_rp;
    if (continues) msgs[n - 1].wo_eos = true;
    ds4_chat_options opt = {.think = r->think, .ctx_size = cfg->ctx};
    if (!ds4_chat_render(msgs, n, &opt, &p, err, errlen)) goto done;
    for (size_t i = n_rp; i-- > 0;) {
        char *at = strstr(p.text, rp[i].sentinel);
        if (at) replace_range(&p, (size_t)(at - p.text), strlen(rp[i].sentinel), rp[i].text, rp[i].len);
    }
    ds4_tokens ids = {0};
    if (!ds4_chat_tokenize(tok, &p, cfg->trust_content, &ids)) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    out->text = p.text;
    out->len = p.len;
    out->spans = p.spans;
    out->n_spans = p.n_spans;
    memset(&p, 0, sizeof p);
    out->ids = ids.ids;
    out->n = (uint32_t)ids.n;
    out->offs = malloc((ids.n + 1) * sizeof *out->offs);
    if (!out->offs) abort();
    srv_token_offsets(tok, out->ids, out->n, 0, out->offs);
    out->thinking = thinking;
    out->continues = continues;
    out->n_replayed = (int)n_rp;
    ok = true;
done:
    ds4_chat_prompt_free(&p);
    for (size_t i = 0; i < n_own; i++) free(own[i]);
    free(own);
    free(rp);
    free(msgs);
    return ok;
}
