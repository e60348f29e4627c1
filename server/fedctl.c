/* fedctl.c: the operator CLI. Dispatches to the subcommands listed in `commands`; each lives in
 * its own server/fedctl_<name>.c. */
#include <stdio.h>
#include <string.h>

#include "server/fedctl.h"

#ifndef FC_VERSION
#define FC_VERSION "0.1.0"
#endif

static const fedctl_command *const commands[] = {
    &fedctl_cmd_status,  &fedctl_cmd_watch,  &fedctl_cmd_rounds, &fedctl_cmd_round,
    &fedctl_cmd_clients, &fedctl_cmd_models, &fedctl_cmd_export, &fedctl_cmd_pause,
    &fedctl_cmd_resume,  &fedctl_cmd_stop,   &fedctl_cmd_client, &fedctl_cmd_verify,
    &fedctl_cmd_aggregate, NULL,
};

static void usage(FILE *out) {
    fprintf(out, "usage: fedctl [--version] [--help] COMMAND [ARGS]\n\ncommands:\n");
    for (size_t i = 0; commands[i]; i++)
        fprintf(out, "  %-12s %s\n", commands[i]->name, commands[i]->summary);
    fprintf(out, "\n`fedctl COMMAND --help` (or `fedctl help COMMAND`) shows a command's options.\n");
}

static const fedctl_command *find(const char *name) {
    for (size_t i = 0; commands[i]; i++)
        if (strcmp(commands[i]->name, name) == 0)
            return commands[i];
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return FEDCTL_BAD_INPUT;
    }
    if (fedctl_is_help(argv[1])) {
        usage(stdout);
        return FEDCTL_OK;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("fedctl %s\n", FC_VERSION);
        return FEDCTL_OK;
    }
    if (strcmp(argv[1], "help") == 0) {
        if (argc < 3) {
            usage(stdout);
            return FEDCTL_OK;
        }
        const fedctl_command *c = find(argv[2]);
        if (!c) {
            fprintf(stderr, "fedctl: unknown command '%s'\n", argv[2]);
            return FEDCTL_BAD_INPUT;
        }
        fputs(c->usage, stdout);
        return FEDCTL_OK;
    }
    const fedctl_command *c = find(argv[1]);
    if (!c) {
        fprintf(stderr, "fedctl: unknown command '%s' (see fedctl --help)\n", argv[1]);
        return FEDCTL_BAD_INPUT;
    }
    for (int i = 2; i < argc; i++)
        if (fedctl_is_help(argv[i])) {
            fputs(c->usage, stdout);
            return FEDCTL_OK;
        }
    return c->run(argc - 1, argv + 1);
}
