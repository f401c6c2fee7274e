/* request.c - one parser per API into one srv_request.
 *
 *   chat/completions  messages (system, developer, user, assistant with
 *                     reasoning_content and tool_calls, tool), tools,
 *                     tool_choice, max_tokens / max_completion_tokens,
 *                     stream + stream_options.include_usage
 *   completions       prompt (a string, or an array holding one string),
 *                     rendered as a one-turn chat like the reference server
 *   responses         instructions, input (a string, or message /
 *                     function_call / function_call_output / reasoning
 *                     items), tools, tool_choice, max_output_tokens, reasoning
 *   messages          system, messages with text / thinking / tool_use /
 *                     tool_result blocks, tools, tool_choice, max_tokens,
 *                     stop_sequences, thinking, output_config.effort
 *
 * Every API also takes temperature, top_p, top_k, min_p, seed, stop and the
 * thinking controls of docs/SERVER.md. Unknown fields are ignored (clients
 * send many); fields we read are type-checked, and a wrong one is a 400 that
 * names it. Nothing here touches the engine: it runs in the connection's
 * thread.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server.h"

typedef struct {
    srv_request *r;
    const srv_config *cfg;
    int *status;
    char *err;
    size_t errlen;
} pctx;

static bool fail(pctx *c, int status, const char *fmt, const char *arg) {
    *c->status = status;
    snprintf(c->err, c->errlen, fmt, arg ? arg : "");
    return false;
}

void srv_request_free(srv_request *r) {
    if (!r) return;
    ar_free(&r->ar);
    free(r->msgs);
    memset(r, 0, sizeof *r);
}

static ds4_chat_message *msg_add(srv_request *r, const char *role) {
    if (r->n_msgs == r->cap_msgs) {
        size_t nc = r->cap_msgs ? r->cap_msgs * 2 : 16;
        ds4_chat_message *q = realloc(r->msgs, nc * sizeof *q);
        if (!q) abort();
        r->msgs = q;
        r->cap_msgs = nc;
    }
    ds4_chat_message *m = &r->msgs[r->n_msgs++];
    memset(m, 0, sizeof *m);
    m->role = role;
    return m;
}

static void add_call(srv_request *r, ds4_chat_message *m, const char *id, const char *name, const char *args) {
    ds4_chat_tool_call *calls = ar_alloc(&r->ar, (m->n_tool_calls + 1) * sizeof *calls);
    if (m->n_tool_calls) memcpy(calls, m->tool_calls, m->n_tool_calls * sizeof *calls);
    calls[m->n_tool_calls] = (ds4_chat_tool_call){ar_strdup(&r->ar, id), ar_strdup(&r->ar, name), args};
    m->tool_calls = calls;
    m->n_tool_calls++;
}

static char *append_text(arena *a, const char *old, const char *add, const char *sep) {
    if (!old || !old[0]) return ar_strdup(a, add);
    if (!add || !add[0]) return (char *)old;
    size_t n = strlen(old) + strlen(sep) + strlen(add);
    char *p = ar_alloc(a, n + 1);
    snprintf(p, n + 1, "%s%s%s", old, sep, add);
    return p;
}

/* ---- fields shared by every API ---- */

static bool get_number(pctx *c, const cJSON *root, const char *key, double lo, double hi, double *out) {
    const cJSON *v = jget(root, key);
    if (!v || cJSON_IsNull(v)) return true;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble < lo || v->valuedouble > hi) {
        char msg[160];
        snprintf(msg, sizeof msg, "'%s' must be a number in [%g, %g]", key, lo, hi);
        return fail(c, 400, "%s", msg);
    }
    *out = v->valuedouble;
    return true;
}

static bool parse_max_tokens(pctx *c, const cJSON *root, const char *const *keys) {
    for (int i = 0; keys[i]; i++) {
        double v = -1;
        if (!get_number(c, root, keys[i], 1, 4294967295.0, &v)) return false;
        if (v >= 1) {
            if (v != floor(v)) return fail(c, 400, "'%s' must be an integer", keys[i]);
            c->r->max_tokens = (uint32_t)v;
        }
    }
    return true;
}

static bool parse_sampling(pctx *c, const cJSON *root) {
    srv_request *r = c->r;
    double t = 1, tp = 1, tk = 0, mp = 0, seed = -1;
    if (!get_number(c, root, "temperature", 0, 100, &t) || !get_number(c, root, "top_p", 0, 1, &tp) ||
        !get_number(c, root, "top_k", 0, 1e9, &tk) || !get_number(c, root, "min_p", 0, 1, &mp) ||
        !get_number(c, root, "seed", -9.3e18, 1.9e19, &seed))
        return false;
    r->sp.temperature = (float)t;
    r->sp.top_p = tp <= 0 ? 1e-6f : (float)tp;
    r->sp.top_k = (int)tk;
    r->sp.min_p = (float)mp;
    if (jget(root, "seed") && !cJSON_IsNull(jget(root, "seed"))) {
        r->seed_set = true;
        r->sp.seed = (uint64_t)(int64_t)seed;
    }
    const cJSON *n = jget(root, "n");
    if (n && !cJSON_IsNull(n) && !(cJSON_IsNumber(n) && n->valuedouble == 1))
        return fail(c, 400, "only n = 1 is supported%s", NULL);
    return true;
}

static bool parse_stop(pctx *c, const cJSON *root, const char *key) {
    const cJSON *v = jget(root, key);
    srv_request *r = c->r;
    if (!v || cJSON_IsNull(v)) return true;
    if (cJSON_IsString(v)) {
        if (!v->valuestring[0]) return true;
        r->stop = ar_alloc(&r->ar, sizeof *r->stop);
        r->stop[0] = ar_own(&r->ar, utf8_sanitize(v->valuestring, strlen(v->valuestring), NULL));
        r->n_stop = 1;
        return true;
    }
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) > 16) return fail(c, 400, "'%s' must be a string or up to 16 strings", key);
    r->stop = ar_alloc(&r->ar, 16 * sizeof *r->stop);
    const cJSON *it;
    cJSON_ArrayForEach(it, v) {
        if (!cJSON_IsString(it)) return fail(c, 400, "'%s' must be a string or up to 16 strings", key);
        if (strlen(it->valuestring) > 512) return fail(c, 400, "a '%s' string is longer than 512 bytes", key);
        if (it->valuestring[0]) r->stop[r->n_stop++] = ar_own(&r->ar, utf8_sanitize(it->valuestring, strlen(it->valuestring), NULL));
    }
    return true;
}

/* Thinking controls (docs/SERVER.md): default on; the model alias
 * deepseek-chat turns it off and deepseek-reasoner on unless a control says
 * otherwise; effort "none" turns it off, "max" asks for Think-Max. */
static bool apply_effort(pctx *c, const char *e, bool *set) {
    if (!e) return true;
    *set = true;
    if (!strcmp(e, "none")) c->r->think = DS4_THINK_NONE;
    else if (!strcmp(e, "max")) c->r->think = DS4_THINK_MAX;
    else if (!strcmp(e, "xhigh") || !strcmp(e, "high") || !strcmp(e, "medium") || !strcmp(e, "low") ||
             !strcmp(e, "minimal"))
        c->r->think = DS4_THINK_HIGH;
    else
        return fail(c, 400, "unknown reasoning effort '%s' (none, minimal, low, medium, high, xhigh, max)", e);
    return true;
}

static bool parse_think(pctx *c, const cJSON *root) {
    srv_request *r = c->r;
    bool set = false;
    r->think = DS4_THINK_HIGH;
    const cJSON *th = jget(root, "thinking");
    if (cJSON_IsBool(th)) {
        r->think = cJSON_IsTrue(th) ? DS4_THINK_HIGH : DS4_THINK_NONE;
        set = true;
    } else if (cJSON_IsObject(th)) {
        const char *type = jstr(th, "type");
        if (type && !strcmp(type, "disabled")) r->think = DS4_THINK_NONE;
        else if (type && (!strcmp(type, "enabled") || !strcmp(type, "adaptive"))) r->think = DS4_THINK_HIGH;
        else return fail(c, 400, "'thinking.type' must be enabled, disabled or adaptive%s", NULL);
        set = true;
    } else if (th && !cJSON_IsNull(th)) {
        return fail(c, 400, "'thinking' must be an object or a boolean%s", NULL);
    }
    const cJSON *think = jget(root, "think");
    if (cJSON_IsBool(think)) {
        r->think = cJSON_IsTrue(think) ? DS4_THINK_HIGH : DS4_THINK_NONE;
        set = true;
    }
    const cJSON *re = jget(root, "reasoning_effort");
    if (re && !cJSON_IsNull(re) && !cJSON_IsString(re)) return fail(c, 400, "'reasoning_effort' must be a string%s", NULL);
    if (!apply_effort(c, cJSON_IsString(re) ? re->valuestring : NULL, &set)) return false;
    const cJSON *reasoning = jget(root, "reasoning");
    if (cJSON_IsObject(reasoning) && !apply_effort(c, jstr(reasoning, "effort"), &set)) return false;
    const cJSON *oc = jget(root, "output_config");
    if (cJSON_IsObject(oc) && !apply_effort(c, jstr(oc, "effort"), &set)) return false;
    if (!set && r->model) {
        if (!strcmp(r->model, "deepseek-chat")) r->think = DS4_THINK_NONE;
        if (!strcmp(r->model, "deepseek-reasoner")) r->think = DS4_THINK_HIGH;
    }
    return true;
}

static bool parse_force(pctx *c, const cJSON *root) {
    const cJSON *f = jget(root, "ds4_force");
    if (!f) return true;
    if (!c->cfg->test_force) return fail(c, 400, "'ds4_force' is a test-only field: start the server with --test-force%s", NULL);
    if (!cJSON_IsString(f)) return fail(c, 400, "'ds4_force' must be a string%s", NULL);
    c->r->force = ar_strdup(&c->r->ar, f->valuestring);
    return true;
}

static bool tool_choice_none(const cJSON *root) {
    const cJSON *tc = jget(root, "tool_choice");
    if (cJSON_IsString(tc)) return !strcmp(tc->valuestring, "none");
    return cJSON_IsObject(tc) && jstr(tc, "type") && !strcmp(jstr(tc, "type"), "none");
}

/* Function schemas as {"name","description","parameters"}; tools of other
 * kinds (hosted search, computer use, ...) are skipped. kind: 0 OpenAI chat
 * ({"type":"function","function":{...}}), 1 Responses (flat), 2 Anthropic
 * ({name, description, input_schema}). */
static bool parse_tool_list(pctx *c, const cJSON *root, int kind) {
    const cJSON *tools = jget(root, "tools");
    if (!tools || cJSON_IsNull(tools)) return true;
    if (!cJSON_IsArray(tools)) return fail(c, 400, "'tools' must be an array%s", NULL);
    if (tool_choice_none(root)) return true;
    cJSON *out = cJSON_CreateArray();
    const cJSON *t;
    cJSON_ArrayForEach(t, tools) {
        if (!cJSON_IsObject(t)) {
            cJSON_Delete(out);
            return fail(c, 400, "every tool must be an object%s", NULL);
        }
        const char *type = jstr(t, "type");
        const cJSON *fn = t;
        if (kind == 0) {
            fn = jget(t, "function");
            if (!cJSON_IsObject(fn)) continue;
        } else if (kind == 1) {
            if (type && strcmp(type, "function")) continue;
        } else if (type && strcmp(type, "custom") && strcmp(type, "function")) {
            continue; /* Anthropic server tools (web_search_..., bash_..., ...) */
        }
        const char *name = jstr(fn, "name");
        if (!name || !name[0]) {
            cJSON_Delete(out);
            return fail(c, 400, "a function tool has no 'name'%s", NULL);
        }
        cJSON *f = cJSON_CreateObject();
        cJSON_AddStringToObject(f, "name", name);
        if (jstr(fn, "description")) cJSON_AddStringToObject(f, "description", jstr(fn, "description"));
        const cJSON *params = jget(fn, kind == 2 ? "input_schema" : "parameters");
        if (params) cJSON_AddItemToObject(f, "parameters", cJSON_Duplicate(params, true));
        cJSON_AddItemToArray(out, f);
    }
    const int n = cJSON_GetArraySize(out);
    if (n > 0) {
        c->r->tools_json = jprint(&c->r->ar, out);
        c->r->tool_names = ar_alloc(&c->r->ar, (size_t)n * sizeof *c->r->tool_names);
        const cJSON *f;
        cJSON_ArrayForEach(f, out) c->r->tool_names[c->r->n_tool_names++] = ar_strdup(&c->r->ar, jstr(f, "name"));
    }
    cJSON_Delete(out);
    return true;
}

/* tool_choice beyond "none" (parse_tool_list drops the tools for that):
 * "auto" (the default); "required" (OpenAI) or {"type": "any"} (Anthropic):
 * some tool must be called; {"type": "allowed_tools"} with mode "required"
 * (chat nests {mode, tools} under "allowed_tools", Responses has them flat):
 * one of those; a named tool ({"type": "function", "function": {"name"}} in
 * chat, {"type": "function", "name"} in Responses, {"type": "tool", "name"}
 * in messages): that one. engine.c makes the answer start with the call. */
/* the index of a function name among the request's tools, or -1 */
static int tool_index(const srv_request *r, const char *name) {
    for (int k = 0; k < r->n_tool_names; k++)
        if (!strcmp(r->tool_names[k], name)) return k;
    return -1;
}

static bool parse_tool_choice(pctx *c, const cJSON *root) {
    const cJSON *tc = jget(root, "tool_choice");
    if (!tc || cJSON_IsNull(tc) || tool_choice_none(root)) return true;
    const char *mode = NULL, *name = NULL;
    const cJSON *allowed = NULL; /* allowed_tools: the tools a required call may name */
    if (cJSON_IsString(tc)) {
        mode = tc->valuestring;
    } else if (cJSON_IsObject(tc)) {
        mode = jstr(tc, "type");
        if (!mode) return fail(c, 400, "'tool_choice' has no 'type'%s", NULL);
        if (!strcmp(mode, "function") || !strcmp(mode, "tool")) {
            const cJSON *fn = jget(tc, "function");
            name = cJSON_IsObject(fn) ? jstr(fn, "name") : jstr(tc, "name");
            if (!name || !name[0]) return fail(c, 400, "'tool_choice' of type '%s' needs the tool's 'name'", mode);
        } else if (!strcmp(mode, "allowed_tools")) { /* chat: {allowed_tools: {mode, tools}}; Responses: flat */
            const cJSON *spec = cJSON_IsObject(jget(tc, "allowed_tools")) ? jget(tc, "allowed_tools") : tc;
            mode = jstr(spec, "mode");
            if (!mode || (strcmp(mode, "auto") && strcmp(mode, "required")))
                return fail(c, 400, "'tool_choice' allowed_tools needs 'mode' auto or required%s", NULL);
            allowed = jget(spec, "tools");
            if (!cJSON_IsArray(allowed)) return fail(c, 400, "'tool_choice' allowed_tools needs a 'tools' array%s", NULL);
        }
    } else {
        return fail(c, 400, "'tool_choice' must be a string or an object%s", NULL);
    }
    if (!name && !strcmp(mode, "auto")) return true;
    if (!name && strcmp(mode, "required") && strcmp(mode, "any"))
        return fail(c, 400, "'tool_choice' '%s' is not one of auto, none, required, any, allowed_tools or a named tool",
                    mode);
    srv_request *r = c->r;
    if (!r->n_tool_names)
        return fail(c, 400, "'tool_choice' asks for a tool call but the request has no function tools%s", NULL);
    if (name) {
        const int k = tool_index(r, name);
        if (k < 0) return fail(c, 400, "'tool_choice' names '%s', which is not among the tools", name);
        r->tool_force_name = r->tool_names[k];
        r->tool_force = 2;
        return true;
    }
    r->force_names = r->tool_names;
    r->n_force_names = r->n_tool_names;
    if (allowed) {
        r->force_names = ar_alloc(&r->ar, (size_t)r->n_tool_names * sizeof *r->force_names);
        r->n_force_names = 0;
        const cJSON *a;
        cJSON_ArrayForEach(a, allowed) {
            const cJSON *fn = jget(a, "function");
            const char *nm = cJSON_IsObject(fn) ? jstr(fn, "name") : jstr(a, "name");
            const int k = nm ? tool_index(r, nm) : -1;
            if (k < 0) continue; /* (hosted tools, or names not in the request) */
            bool dup = false;
            for (int i = 0; i < r->n_force_names; i++) dup = dup || r->force_names[i] == r->tool_names[k];
            if (!dup) r->force_names[r->n_force_names++] = r->tool_names[k];
        }
        if (!r->n_force_names)
            return fail(c, 400, "'tool_choice' allowed_tools lists none of the request's function tools%s", NULL);
    }
    r->tool_force = 1;
    return true;
}

static bool parse_tools(pctx *c, const cJSON *root, int kind) {
    return parse_tool_list(c, root, kind) && parse_tool_choice(c, root);
}

/* response_format (chat) / text.format (responses): a JSON schema that the
 * template states in the system prompt (an instruction, not constrained
 * decoding). json_object asks for any object. */
static bool parse_response_format(pctx *c, const cJSON *rf, const char *key) {
    if (!rf || cJSON_IsNull(rf)) return true;
    const char *type = jstr(rf, "type");
    if (!cJSON_IsObject(rf) || !type) return fail(c, 400, "'%s' must be an object with a 'type'", key);
    if (!strcmp(type, "text")) return true;
    if (!strcmp(type, "json_object")) {
        c->r->response_format_json = "{\"type\": \"object\"}";
        return true;
    }
    if (strcmp(type, "json_schema")) return fail(c, 400, "'%s.type' must be text, json_object or json_schema", key);
    const cJSON *js = jget(rf, "json_schema");
    const cJSON *schema = jget(js ? js : rf, "schema");
    if (!cJSON_IsObject(schema)) return fail(c, 400, "'%s' json_schema needs a 'schema' object", key);
    c->r->response_format_json = jprint(&c->r->ar, schema);
    return true;
}

static bool common(pctx *c, const cJSON *root) {
    srv_request *r = c->r;
    const cJSON *model = jget(root, "model");
    if (model && !cJSON_IsNull(model) && !cJSON_IsString(model)) return fail(c, 400, "'model' must be a string%s", NULL);
    r->model = cJSON_IsString(model) && model->valuestring[0]
                   ? ar_own(&r->ar, utf8_sanitize(model->valuestring, strlen(model->valuestring), NULL))
                   : c->cfg->model_id;
    const cJSON *stream = jget(root, "stream");
    if (stream && !cJSON_IsNull(stream) && !cJSON_IsBool(stream)) return fail(c, 400, "'stream' must be a boolean%s", NULL);
    r->stream = cJSON_IsTrue(stream);
    const cJSON *so = jget(root, "stream_options");
    r->include_usage = cJSON_IsObject(so) && cJSON_IsTrue(jget(so, "include_usage"));
    return parse_sampling(c, root) && parse_think(c, root) && parse_force(c, root);
}

/* ---- chat/completions ---- */

static bool parse_chat(pctx *c, const cJSON *root) {
    srv_request *r = c->r;
    static const char *const mt[] = {"max_tokens", "max_completion_tokens", NULL};
    if (!common(c, root) || !parse_max_tokens(c, root, mt) || !parse_stop(c, root, "stop") ||
        !parse_tools(c, root, 0) || !parse_response_format(c, jget(root, "response_format"), "response_format"))
        return false;
    const cJSON *msgs = jget(root, "messages");
    if (!cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) == 0) return fail(c, 400, "'messages' must be a non-empty array%s", NULL);
    const cJSON *m;
    int i = 0;
    cJSON_ArrayForEach(m, msgs) {
        char where[64];
        snprintf(where, sizeof where, "messages[%d]", i++);
        const char *role = jstr(m, "role");
        if (!role) return fail(c, 400, "%s: 'role' is missing", where);
        bool bad = false;
        char *content = jtext(&r->ar, jget(m, "content"), &bad);
        if (bad) return fail(c, 400, "%s: 'content' must be a string or an array of text parts", where);
        ds4_chat_message *dm;
        if (!strcmp(role, "system") || !strcmp(role, "developer")) {
            dm = msg_add(r, "system");
            dm->content = content;
        } else if (!strcmp(role, "user")) {
            dm = msg_add(r, "user");
            dm->content = content;
        } else if (!strcmp(role, "assistant")) {
            dm = msg_add(r, "assistant");
            dm->content = content;
            const cJSON *rc = jget(m, "reasoning_content");
            if (!cJSON_IsString(rc)) rc = jget(m, "reasoning");
            if (cJSON_IsString(rc)) dm->reasoning_content = ar_strdup(&r->ar, rc->valuestring);
            const cJSON *tcs = jget(m, "tool_calls"), *tc;
            if (tcs && !cJSON_IsNull(tcs) && !cJSON_IsArray(tcs)) return fail(c, 400, "%s: 'tool_calls' must be an array", where);
            cJSON_ArrayForEach(tc, tcs) {
                const cJSON *fn = jget(tc, "function");
                const char *name = jstr(fn, "name");
                if (!name) return fail(c, 400, "%s: a tool call has no function name", where);
                const cJSON *args = jget(fn, "arguments");
                const char *a = cJSON_IsString(args) ? ar_strdup(&r->ar, args->valuestring)
                                : args && !cJSON_IsNull(args) ? jprint(&r->ar, args) : "{}";
                add_call(r, dm, jstr(tc, "id"), name, a);
            }
        } else if (!strcmp(role, "tool") || !strcmp(role, "function")) {
            dm = msg_add(r, "tool");
            dm->content = content;
            const char *id = jstr(m, "tool_call_id");
            dm->tool_call_id = ar_strdup(&r->ar, id ? id : "");
        } else {
            return fail(c, 400, "unknown role '%s' (system, developer, user, assistant, tool)", role);
        }
    }
    return true;
}

/* ---- completions ---- */

static bool parse_completions(pctx *c, const cJSON *root) {
    srv_request *r = c->r;
    static const char *const mt[] = {"max_tokens", NULL};
    if (!common(c, root) || !parse_max_tokens(c, root, mt) || !parse_stop(c, root, "stop")) return false;
    const cJSON *p = jget(root, "prompt");
    if (cJSON_IsArray(p) && cJSON_GetArraySize(p) == 1) p = cJSON_GetArrayItem(p, 0);
    if (!cJSON_IsString(p)) return fail(c, 400, "'prompt' must be a string (or an array holding one string)%s", NULL);
    if (cJSON_IsTrue(jget(root, "echo"))) return fail(c, 400, "'echo' is not supported%s", NULL);
    msg_add(r, "system")->content = "You are a helpful assistant";
    msg_add(r, "user")->content = ar_strdup(&r->ar, p->valuestring);
    return true;
}

/* ---- responses ---- */

static bool parse_responses(pctx *c, const cJSON *root) {
    srv_request *r = c->r;
    static const char *const mt[] = {"max_output_tokens", "max_tokens", NULL};
    if (!common(c, root) || !parse_max_tokens(c, root, mt) || !parse_stop(c, root, "stop") ||
        !parse_tools(c, root, 1) || !parse_response_format(c, jget(jget(root, "text"), "format"), "text.format"))
        return false;
    if (jget(root, "previous_response_id") && !cJSON_IsNull(jget(root, "previous_response_id")))
        return fail(c, 400, "'previous_response_id' is not supported: this server keeps no conversations, send the whole input%s", NULL);
    if (jget(root, "conversation") && !cJSON_IsNull(jget(root, "conversation")))
        return fail(c, 400, "'conversation' is not supported: send the whole input%s", NULL);
    const cJSON *ins = jget(root, "instructions");
    bool bad = false;
    char *instructions = jtext(&r->ar, ins, &bad);
    if (bad) return fail(c, 400, "'instructions' must be a string%s", NULL);
    if (instructions) msg_add(r, "system")->content = instructions;
    const cJSON *input = jget(root, "input");
    if (cJSON_IsString(input)) {
        msg_add(r, "user")->content = ar_strdup(&r->ar, input->valuestring);
        return true;
    }
    if (!cJSON_IsArray(input) || cJSON_GetArraySize(input) == 0) return fail(c, 400, "'input' must be a string or a non-empty array%s", NULL);
    ds4_chat_message *cur = NULL; /* the assistant turn being assembled */
    const cJSON *it;
    int i = 0;
    cJSON_ArrayForEach(it, input) {
        char where[64];
        snprintf(where, sizeof where, "input[%d]", i++);
        if (!cJSON_IsObject(it)) return fail(c, 400, "%s must be an object", where);
        const char *type = jstr(it, "type");
        const char *role = jstr(it, "role");
        if (!type || !strcmp(type, "message")) {
            if (!role) return fail(c, 400, "%s: a message needs a 'role'", where);
            char *content = jtext(&r->ar, jget(it, "content"), &bad);
            if (bad) return fail(c, 400, "%s: 'content' must be a string or an array of text parts", where);
            if (!strcmp(role, "assistant")) {
                if (!cur) cur = msg_add(r, "assistant");
                cur->content = append_text(&r->ar, cur->content, content, "");
                continue;
            }
            cur = NULL;
            if (!strcmp(role, "system") || !strcmp(role, "developer")) msg_add(r, "system")->content = content;
            else if (!strcmp(role, "user")) msg_add(r, "user")->content = content;
            else return fail(c, 400, "unknown role '%s' (system, developer, user, assistant)", role);
        } else if (!strcmp(type, "function_call")) {
            const char *name = jstr(it, "name"), *args = jstr(it, "arguments"), *id = jstr(it, "call_id");
            if (!name) return fail(c, 400, "%s: a function_call needs a 'name'", where);
            if (!cur) cur = msg_add(r, "assistant");
            add_call(r, cur, id, name, ar_strdup(&r->ar, args ? args : "{}"));
        } else if (!strcmp(type, "function_call_output")) {
            cur = NULL;
            const cJSON *out = jget(it, "output");
            char *text = cJSON_IsString(out) ? ar_strdup(&r->ar, out->valuestring) : jtext(&r->ar, out, &bad);
            if (bad) return fail(c, 400, "%s: 'output' must be a string or an array of text parts", where);
            ds4_chat_message *m = msg_add(r, "tool");
            m->content = text;
            const char *id = jstr(it, "call_id");
            m->tool_call_id = ar_strdup(&r->ar, id ? id : "");
        } else if (!strcmp(type, "reasoning")) {
            sbuf b = {0};
            const cJSON *parts = jget(it, "content"), *p;
            if (!cJSON_IsArray(parts) || cJSON_GetArraySize(parts) == 0) parts = jget(it, "summary");
            cJSON_ArrayForEach(p, parts) if (jstr(p, "text")) sb_puts(&b, jstr(p, "text"));
            if (!cur) cur = msg_add(r, "assistant");
            cur->reasoning_content = append_text(&r->ar, cur->reasoning_content, ar_own(&r->ar, sb_take(&b)), "");
        } else if (!strcmp(type, "item_reference")) {
            return fail(c, 400, "%s: item_reference is not supported: send the items themselves", where);
        }
        /* other item kinds (hosted tool calls) carry nothing the model saw */
    }
    return true;
}

/* ---- messages (Anthropic) ---- */

static bool parse_messages(pctx *c, const cJSON *root) {
    srv_request *r = c->r;
    static const char *const mt[] = {"max_tokens", NULL};
    if (!common(c, root) || !parse_max_tokens(c, root, mt) || !parse_stop(c, root, "stop_sequences") ||
        !parse_tools(c, root, 2))
        return false;
    bool bad = false;
    char *system = jtext(&r->ar, jget(root, "system"), &bad);
    if (bad) return fail(c, 400, "'system' must be a string or an array of text blocks%s", NULL);
    if (system) msg_add(r, "system")->content = system;
    const cJSON *msgs = jget(root, "messages");
    if (!cJSON_IsArray(msgs) || (cJSON_GetArraySize(msgs) == 0 && !r->count_only))
        return fail(c, 400, "'messages' must be a non-empty array%s", NULL);
    const cJSON *m;
    int i = 0;
    cJSON_ArrayForEach(m, msgs) {
        char where[64];
        snprintf(where, sizeof where, "messages[%d]", i++);
        const char *role = jstr(m, "role");
        bool assistant = role && !strcmp(role, "assistant");
        if (!role || (!assistant && strcmp(role, "user")))
            return fail(c, 400, "%s: 'role' must be user or assistant", where);
        const cJSON *content = jget(m, "content");
        if (cJSON_IsString(content)) {
            msg_add(r, assistant ? "assistant" : "user")->content = ar_strdup(&r->ar, content->valuestring);
            continue;
        }
        if (!cJSON_IsArray(content)) return fail(c, 400, "%s: 'content' must be a string or an array of blocks", where);
        ds4_chat_message *am = assistant ? msg_add(r, "assistant") : NULL;
        ds4_chat_message *um = NULL; /* the user text being collected */
        const cJSON *b;
        cJSON_ArrayForEach(b, content) {
            const char *type = jstr(b, "type");
            if (!type) return fail(c, 400, "%s: a content block has no 'type'", where);
            if (!strcmp(type, "text")) {
                const char *text = jstr(b, "text");
                if (!text) return fail(c, 400, "%s: a text block has no 'text'", where);
                if (assistant) {
                    am->content = append_text(&r->ar, am->content, text, "");
                } else {
                    if (!um) um = msg_add(r, "user");
                    um->content = append_text(&r->ar, um->content, text, "\n\n");
                }
            } else if (!strcmp(type, "thinking") && assistant) {
                const char *t = jstr(b, "thinking");
                am->reasoning_content = append_text(&r->ar, am->reasoning_content, t ? t : "", "");
            } else if (!strcmp(type, "tool_use") && assistant) {
                const char *name = jstr(b, "name");
                if (!name) return fail(c, 400, "%s: a tool_use block has no 'name'", where);
                const cJSON *input = jget(b, "input");
                add_call(r, am, jstr(b, "id"), name, input ? jprint(&r->ar, input) : "{}");
            } else if (!strcmp(type, "tool_result") && !assistant) {
                const cJSON *tc = jget(b, "content");
                char *text = jtext(&r->ar, tc, &bad);
                if (bad) return fail(c, 400, "%s: a tool_result's 'content' must be a string or text blocks", where);
                ds4_chat_message *tm = msg_add(r, "tool");
                tm->content = text ? text : "";
                if (cJSON_IsTrue(jget(b, "is_error"))) tm->content = append_text(&r->ar, "Error: ", tm->content, "");
                const char *id = jstr(b, "tool_use_id");
                tm->tool_call_id = ar_strdup(&r->ar, id ? id : "");
                um = NULL;
            } else if (!strcmp(type, "image") || !strcmp(type, "document")) {
                if (!assistant) {
                    if (!um) um = msg_add(r, "user");
                    um->content = append_text(&r->ar, um->content, "[attachment omitted: this model reads text only]", "\n\n");
                }
            }
            /* redacted_thinking, server tool blocks: nothing the model can read */
        }
    }
    return true;
}

bool srv_parse_request(srv_api api, const char *body, size_t len, const srv_config *cfg, srv_request *r,
                       int *status, char *err, size_t errlen) {
    bool count_only = r->count_only;
    memset(r, 0, sizeof *r);
    r->api = api;
    r->count_only = count_only;
    r->sp = (ds4_sampler_params){.temperature = 1, .top_p = 1};
    pctx c = {r, cfg, status, err, errlen};
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, false);
    if (!root) {
        size_t at = end && end >= body ? (size_t)(end - body) : 0;
        char msg[96];
        snprintf(msg, sizeof msg, "invalid JSON in the request body (near byte %zu)", at);
        return fail(&c, 400, "%s", msg);
    }
    bool ok;
    if (!cJSON_IsObject(root)) {
        ok = fail(&c, 400, "the request body must be a JSON object%s", NULL);
    } else {
        switch (api) {
        case API_CHAT: ok = parse_chat(&c, root); break;
        case API_COMPLETIONS: ok = parse_completions(&c, root); break;
        case API_RESPONSES: ok = parse_responses(&c, root); break;
        default: ok = parse_messages(&c, root); break;
        }
    }
    cJSON_Delete(root);
    return ok;
}
