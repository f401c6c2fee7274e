/* chat_template.h - DeepSeek V4 prompt rendering, byte-exact with DeepSeek's
 * reference encoder (encoding_dsv4.py, as shipped in sglang; a vendored copy
 * is tests/reference/encoding_dsv4.py).
 *
 * A conversation (system, developer, user, assistant, tool, latest_reminder
 * messages) becomes one string:
 *
 *   <｜begin▁of▁sentence｜>[Think-Max prefix]system text[\n\n## Tools ...]
 *   <｜User｜>user text<｜Assistant｜></think>  (or <think> when thinking)
 *   [reasoning</think>]answer[\n\n<｜DSML｜tool_calls>...]<｜end▁of▁sentence｜>
 *   <｜User｜><tool_result>...</tool_result>\n\n<tool_result>...</tool_result> ...
 *
 * with the reference's rules: tool results merge into a user turn, tool
 * results are ordered like the calls, reasoning of turns before the last
 * user turn is dropped unless tools are in play, the assistant prefix
 * follows the last user/developer turn. The string is then tokenized with
 * special tokens recognised (ds4_chat_tokenize), as the official server
 * does; the renderer also records where client-provided text sits so that
 * it can be tokenized as plain text instead.
 *
 * Core library code: libc only. Tool schemas and tool-call arguments are
 * JSON text; they are re-serialized exactly as Python's json.dumps would
 * (", " and ": " separators, non-ASCII kept, Python float repr). */
#ifndef DS4_CHAT_TEMPLATE_H
#define DS4_CHAT_TEMPLATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

typedef enum {
    DS4_THINK_NONE = 0, /* chat mode: <｜Assistant｜></think> */
    DS4_THINK_HIGH = 1, /* thinking: <｜Assistant｜><think> */
    DS4_THINK_MAX = 2,  /* thinking + the Think-Max prefix after BOS */
} ds4_think_mode;

/* Think-Max needs this much context; below it MAX renders as HIGH. */
#define DS4_THINK_MAX_MIN_CTX 393216u

typedef struct {
    const char *id;        /* call id, used to order tool results; may be NULL */
    const char *name;      /* function name */
    const char *arguments; /* JSON text of the arguments object */
} ds4_chat_tool_call;

typedef struct {
    /* "system", "developer", "user", "assistant", "tool", "latest_reminder" */
    const char *role;
    const char *content;           /* NULL renders as "" */
    const char *reasoning_content; /* assistant */
    const ds4_chat_tool_call *tool_calls; /* assistant */
    size_t n_tool_calls;
    const char *tool_call_id; /* tool */
    /* system / developer: JSON array of tools, OpenAI style
     * [{"type":"function","function":{...}}] (an element without "function"
     * is used as the schema itself). The server puts the request's tools on
     * the first message, a system message inserted empty if needed. */
    const char *tools_json;
    const char *response_format_json; /* system / developer */
    const char *task;                 /* action, query, authority, domain, title, read_url */
    bool wo_eos;                      /* assistant: no <｜end▁of▁sentence｜> (a prefix to continue) */
} ds4_chat_message;

typedef struct {
    ds4_think_mode think;
    uint64_t ctx_size;       /* for the Think-Max threshold; 0 = unknown (MAX -> HIGH) */
    bool keep_reasoning;     /* reference drop_thinking = false */
    bool no_bos;             /* reference add_default_bos_token = false */
} ds4_chat_options;

/* A rendered prompt: text plus the byte spans that came from the client
 * (message contents, reasoning, tool results, names, arguments, schemas),
 * sorted and non-overlapping. */
typedef struct {
    char *text; /* NUL-terminated */
    size_t len, cap;
    ds4_span *spans;
    size_t n_spans, cap_spans;
} ds4_chat_prompt;

/* Render messages[0..n). Errors (bad role, empty developer message, invalid
 * tools / response_format JSON, unknown task, out of memory) return false
 * with a message. *out is reset first; free it with ds4_chat_prompt_free. */
bool ds4_chat_render(const ds4_chat_message *messages, size_t n, const ds4_chat_options *opt, ds4_chat_prompt *out,
                     char *err, size_t errlen);
void ds4_chat_prompt_free(ds4_chat_prompt *p);

/* Tokenize a rendered prompt. trust_content = true reproduces the official
 * ids (special-token strings inside contents become special tokens);
 * false keeps client text plain (ds4_tokenize_spans). */
bool ds4_chat_tokenize(const ds4_tokenizer *t, const ds4_chat_prompt *p, bool trust_content, ds4_tokens *out);

/* The one-shot chat prompt of `ds4 -m FILE -p TEXT`: an optional system
 * message (NULL or "" for none) and one user message, rendered and
 * tokenized. ctx_size decides Think-Max as above. */
bool ds4_chat_prompt_ids(const ds4_tokenizer *t, const char *system, const char *user, ds4_think_mode think,
                         uint64_t ctx_size, bool trust_content, ds4_tokens *out, char *err, size_t errlen);

/* Python json.dumps(json.loads(json), ensure_ascii=False) into a malloc'd
 * NUL-terminated string (NULL + message if json is not valid JSON). Exposed
 * for the DSML parser and tests. */
char *ds4_json_python_dumps(const char *json, size_t len, char *err, size_t errlen);
/* Python json.dumps(str, ensure_ascii=False) of the UTF-8 text s[0..n). */
char *ds4_json_python_quote(const char *s, size_t n);

#endif
