/* ds4_main.c - the `ds4` command: dispatches to one subcommand per file
 * (cli/cmd_*.c). */
#include <stdio.h>
#include <string.h>

#include "commands.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: ds4 -m FILE.gguf -p TEXT [options]   one chat turn (ds4 --help-chat for options)\n"
            "       ds4 <command> [options]\n"
            "commands:\n"
            "  info FILE.gguf        metadata, tensor table, bytes per type, DS4 schema check\n"
            "  logits -m FILE ...    logits for every position of a token-id sequence\n"
            "  generate -m FILE ...  continue a token-id sequence (greedy or sampled)\n"
            "  tokenize -m FILE      tokenize stdin (ds4 tokenize --help)\n");
}

int main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "info") == 0) return ds4_cmd_info(argc - 1, argv + 1);
    if (strcmp(argv[1], "logits") == 0) return ds4_cmd_logits(argc - 1, argv + 1);
    if (strcmp(argv[1], "generate") == 0) return ds4_cmd_generate(argc - 1, argv + 1);
    if (strcmp(argv[1], "tokenize") == 0) return ds4_cmd_tokenize(argc - 1, argv + 1);
    if (strcmp(argv[1], "--help-chat") == 0) {
        char *h[] = {"ds4", "--help"};
        return ds4_cmd_chat(2, h);
    }
    if (argv[1][0] == '-') return ds4_cmd_chat(argc, argv); /* ds4 -m FILE -p TEXT */
    fprintf(stderr, "ds4: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
