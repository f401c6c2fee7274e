/* commands.h - entry points of the `ds4` subcommands (argv[0] is the
 * subcommand name). Each returns the process exit status. */
#ifndef DS4_CLI_COMMANDS_H
#define DS4_CLI_COMMANDS_H

int ds4_cmd_info(int argc, char **argv);
int ds4_cmd_logits(int argc, char **argv);
int ds4_cmd_generate(int argc, char **argv);
int ds4_cmd_tokenize(int argc, char **argv);
int ds4_cmd_chat(int argc, char **argv);

/* Whole file as a NUL-terminated malloc'd string (NULL if unreadable). */
char *ds4_cli_read_file(const char *path);

#endif
