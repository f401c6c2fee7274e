/* dsml_parser.h - split a generated DeepSeek V4 assistant turn, as it
 * streams, into reasoning, content and DSML tool calls.
 *
 * The model writes (thinking mode: the prompt ended with <think>)
 *
 *   reasoning</think>content\n\n<｜DSML｜tool_calls>
 *   <｜DSML｜invoke name="NAME">
 *   <｜DSML｜parameter name="KEY" string="true|false">VALUE</｜DSML｜parameter>
 *   </｜DSML｜invoke>
 *   </｜DSML｜tool_calls>
 *
 * Feed decoded text in any pieces (token by token is fine); the parser calls
 * back with reasoning / content deltas as soon as they cannot be the start of
 * a marker, and with each tool call once its </｜DSML｜invoke> arrives. Tool
 * call arguments come out as a JSON object text built the way DeepSeek's
 * reference parser builds them: string="true" values become JSON strings,
 * string="false" values are kept as written (encoded as a JSON string
 * instead when they are not valid JSON).
 *
 * Tolerant by design: a tool block that starts without the blank line, or
 * inside unclosed reasoning (no </think>), is still recognised; DSML that
 * does not parse, and a block cut short by the end of the stream, are
 * reported as content text (and had_error is set) instead of failing. */
#ifndef DS4_DSML_PARSER_H
#define DS4_DSML_PARSER_H

#include <stdbool.h>
#include <stddef.h>

typedef enum {
    DS4_DSML_REASONING,       /* text: a reasoning delta */
    DS4_DSML_CONTENT,         /* text: a content delta */
    DS4_DSML_TOOL_CALL_BEGIN, /* index, name: an invoke header was read */
    DS4_DSML_TOOL_CALL,       /* index, name, arguments: a complete call */
} ds4_dsml_event_kind;

typedef struct {
    ds4_dsml_event_kind kind;
    const char *text; /* REASONING / CONTENT (not NUL-terminated) */
    size_t len;
    int index; /* tool calls, from 0 */
    const char *name;
    size_t name_len;
    const char *arguments; /* JSON object text, NUL-terminated */
    size_t arguments_len;
} ds4_dsml_event;

typedef void (*ds4_dsml_callback)(void *ud, const ds4_dsml_event *ev);

typedef enum {
    DS4_DSML_STATE_REASONING,  /* inside <think> */
    DS4_DSML_STATE_CONTENT,    /* plain answer text */
    DS4_DSML_STATE_TOOL_CALLS, /* inside a tool-call block */
    DS4_DSML_STATE_DONE,       /* after <｜end▁of▁sentence｜> */
} ds4_dsml_state;

typedef struct ds4_dsml_parser ds4_dsml_parser;

/* thinking: the prompt ended with <think>, so output starts as reasoning. */
ds4_dsml_parser *ds4_dsml_parser_new(bool thinking, ds4_dsml_callback cb, void *ud);
void ds4_dsml_parser_free(ds4_dsml_parser *p);
/* False only on out-of-memory. */
bool ds4_dsml_parser_feed(ds4_dsml_parser *p, const char *text, size_t len);
/* End of the stream: flush what was held back; an unterminated tool block is
 * reported as content and sets had_error. */
bool ds4_dsml_parser_finish(ds4_dsml_parser *p);

ds4_dsml_state ds4_dsml_parser_state(const ds4_dsml_parser *p);
int ds4_dsml_parser_n_calls(const ds4_dsml_parser *p);
/* Some DSML was malformed or truncated (and reported as text). */
bool ds4_dsml_parser_had_error(const ds4_dsml_parser *p);

#endif
