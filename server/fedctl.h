/* fedctl.h: the operator CLI's command table.
 *
 * Each subcommand lives in server/fedctl_<name>.c and exposes one entry point. The entry point
 * gets argv starting at the subcommand's own name and returns the process exit status:
 *   0  success
 *   1  the command ran but failed (I/O error, corrupt database, ...)
 *   2  bad input: usage, a missing or malformed file, an unknown rule or parameter. The command
 *      prints exactly one line "fedctl NAME: ..." to stderr.
 */
#ifndef FC_FEDCTL_H
#define FC_FEDCTL_H

#define FEDCTL_OK 0
#define FEDCTL_FAILED 1
#define FEDCTL_BAD_INPUT 2

typedef struct fedctl_command {
    const char *name;
    const char *summary; /* one line for `fedctl --help` */
    const char *usage;   /* full help text for `fedctl NAME --help` */
    int (*run)(int argc, char **argv);
} fedctl_command;

extern const fedctl_command fedctl_cmd_aggregate;
extern const fedctl_command fedctl_cmd_client;
extern const fedctl_command fedctl_cmd_export;
extern const fedctl_command fedctl_cmd_rounds;
extern const fedctl_command fedctl_cmd_verify;
/* fedctl_http.c: subcommands over the daemon's HTTP API */
extern const fedctl_command fedctl_cmd_status;
extern const fedctl_command fedctl_cmd_round;
extern const fedctl_command fedctl_cmd_clients;
extern const fedctl_command fedctl_cmd_models;
extern const fedctl_command fedctl_cmd_pause;
extern const fedctl_command fedctl_cmd_resume;
extern const fedctl_command fedctl_cmd_stop;
extern const fedctl_command fedctl_cmd_watch;
/* `rounds` and `export` without --db talk to the HTTP API through these. */
int fedctl_http_rounds(int argc, char **argv);
int fedctl_http_export(int argc, char **argv);
/* Opens the database at path read-only (it must exist). FEDCTL_OK with *out set, or the
 * error printed as one line: bad input for a missing or foreign file or schema, failure else. */
struct store;
int fedctl_open_store_ro(const char *cmd, const char *path, struct store **out);
/* 1 if argv (after the command name) holds the option `flag`. */
int fedctl_has_flag(int argc, char **argv, const char *flag);

/* Prints "fedctl CMD: " + message + newline to stderr; returns FEDCTL_BAD_INPUT. */
int fedctl_bad_input(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Same, returning FEDCTL_FAILED. */
int fedctl_failed(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* 1 if arg is -h or --help. */
int fedctl_is_help(const char *arg);

#endif
