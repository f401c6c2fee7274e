/* cmd_tokenize.c - `ds4 tokenize`: tokenize stdin with a model's tokenizer,
 * for debugging prompts and the tokenizer itself.
 *
 *   ds4 tokenize -m FILE [--ids] [--plain] [--chat [--think none|high|max]
 *                [--system TEXT] [--ctx N]] < text
 *   ds4 tokenize -m FILE --decode < "id id id ..."
 *
 * Default output: one token per line, "id<TAB>text", the text escaped so
 * that control bytes, invalid UTF-8 and the token boundaries are visible;
 * --ids prints just the ids on one line. --plain treats special-token
 * strings in the input as text. --chat renders stdin as the user message of
 * a one-shot DeepSeek V4 chat prompt first. --decode reads ids and writes
 * the bytes they stand for. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_template.h"
#include "commands.h"
#include "gguf.h"
#include "tokenizer.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: ds4 tokenize -m FILE [--ids] [--plain] [--chat] [--think none|high|max]\n"
            "                    [--system TEXT] [--ctx N] [--decode]   (input on stdin)\n"
            "  --ids      print only the ids, space separated\n"
            "  --plain    special-token strings in the input are plain text\n"
            "  --chat     render the input as a one-shot chat prompt (user message) first\n"
            "  --think    thinking mode of --chat (default none)\n"
            "  --system   system message of --chat\n"
            "  --ctx N    context size for --think max (below 393216 it renders as high)\n"
            "  --decode   read token ids from stdin and write their bytes\n");
}

static char *read_stdin(size_t *len) {
    size_t n = 0, cap = 65536;
    char *b = malloc(cap + 1);
    if (!b) return NULL;
    for (;;) {
        if (n == cap) {
            cap *= 2;
            char *q = realloc(b, cap + 1);
            if (!q) {
                free(b);
                return NULL;
            }
            b = q;
        }
        size_t r = fread(b + n, 1, cap - n, stdin);
        if (r == 0) break;
        n += r;
    }
    b[n] = 0;
    *len = n;
    return b;
}

static void print_escaped(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n')
            fputs("\\n", stdout);
        else if (c == '\t')
            fputs("\\t", stdout);
        else if (c == '\r')
            fputs("\\r", stdout);
        else if (c == '\\')
            fputs("\\\\", stdout);
        else if (c < 0x20 || c == 0x7F)
            printf("\\x%02x", c);
        else if (c >= 0x80) {
            /* whole UTF-8 characters as they are, stray bytes escaped */
            size_t l = c >= 0xC2 && c < 0xE0 ? 2 : c >= 0xE0 && c < 0xF0 ? 3 : c >= 0xF0 && c < 0xF5 ? 4 : 0;
            bool ok = l && i + l <= n;
            for (size_t k = 1; ok && k < l; k++) ok = ((unsigned char)s[i + k] & 0xC0) == 0x80;
            if (ok) {
                fwrite(s + i, 1, l, stdout);
                i += l - 1;
            } else {
                printf("\\x%02x", c);
            }
        } else
            putchar(c);
    }
}

int ds4_cmd_tokenize(int argc, char **argv) {
    const char *model = NULL, *system = NULL;
    bool ids_only = false, plain = false, chat = false, decode = false;
    ds4_think_mode think = DS4_THINK_NONE;
    unsigned long long ctx = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if ((!strcmp(a, "-m") || !strcmp(a, "--model")) && i + 1 < argc)
            model = argv[++i];
        else if (!strcmp(a, "--ids"))
            ids_only = true;
        else if (!strcmp(a, "--plain"))
            plain = true;
        else if (!strcmp(a, "--chat"))
            chat = true;
        else if (!strcmp(a, "--decode"))
            decode = true;
        else if (!strcmp(a, "--system") && i + 1 < argc)
            system = argv[++i];
        else if (!strcmp(a, "--ctx") && i + 1 < argc)
            ctx = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(a, "--think") && i + 1 < argc) {
            const char *v = argv[++i];
            if (!strcmp(v, "none"))
                think = DS4_THINK_NONE;
            else if (!strcmp(v, "high"))
                think = DS4_THINK_HIGH;
            else if (!strcmp(v, "max"))
                think = DS4_THINK_MAX;
            else {
                fprintf(stderr, "ds4 tokenize: --think must be none, high or max\n");
                return 2;
            }
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "ds4 tokenize: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!model) {
        usage(stderr);
        return 2;
    }
    char err[512];
    gguf_file *f = gguf_open(model, err, sizeof err);
    if (!f) {
        fprintf(stderr, "ds4 tokenize: %s\n", err);
        return 1;
    }
    ds4_tokenizer *t = ds4_tokenizer_from_gguf(f, err, sizeof err);
    if (!t) {
        fprintf(stderr, "ds4 tokenize: %s: %s\n", model, err);
        gguf_close(f);
        return 1;
    }
    size_t len;
    char *in = read_stdin(&len);
    int rc = 0;
    ds4_tokens ids = {0};
    if (!in) {
        fprintf(stderr, "ds4 tokenize: out of memory\n");
        rc = 1;
    } else if (decode) {
        char *p = in;
        for (;;) {
            char *e;
            long v = strtol(p, &e, 10);
            if (e == p) break;
            ds4_tokens_push(&ids, (int32_t)v);
            p = e;
        }
        char *out = NULL;
        size_t ol = 0, oc = 0;
        if (ds4_detokenize(t, ids.ids, ids.n, &out, &ol, &oc)) fwrite(out, 1, ol, stdout);
        free(out);
    } else {
        bool ok;
        if (chat)
            ok = ds4_chat_prompt_ids(t, system, in, think, ctx, !plain, &ids, err, sizeof err);
        else
            ok = ds4_tokenize(t, in, len, !plain, &ids);
        if (!ok) {
            fprintf(stderr, "ds4 tokenize: %s\n", chat ? err : "out of memory");
            rc = 1;
        } else if (ids_only) {
            for (size_t i = 0; i < ids.n; i++) printf(i ? " %d" : "%d", ids.ids[i]);
            printf("\n");
        } else {
            for (size_t i = 0; i < ids.n; i++) {
                size_t bl;
                const char *b = ds4_token_bytes(t, ids.ids[i], &bl);
                printf("%d\t", ids.ids[i]);
                print_escaped(b, bl);
                printf("\n");
            }
            fprintf(stderr, "%zu tokens from %zu input bytes\n", ids.n, len);
        }
    }
    ds4_tokens_free(&ids);
    free(in);
    ds4_tokenizer_free(t);
    gguf_close(f);
    return rc;
}
