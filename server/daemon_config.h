/* daemon_config.h: the fedcoord daemon's configuration: its schema (every key the daemon reads,
 * with default, range and help), its command line, the checks that span several keys, and the
 * typed struct the daemon runs from.
 *
 * daemon_config.c owns the schema table (dcfg_schema) and turning a command line into a dcfg.
 * It never opens sockets, never creates folders or databases, never logs: it only reads the
 * configuration file and checks that the files it names can be read. docs/configuration.md is
 * generated from dcfg_schema (tests/unit/test_daemon_config.c keeps the two equal).
 *
 * Command line:
 *   fedcoord --config FILE [--set section.key=value]... [--check-config]
 *   fedcoord --help | --version
 */
#ifndef FC_DAEMON_CONFIG_H
#define FC_DAEMON_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "aggregators/agg.h"
#include "core/buf.h"
#include "core/config.h"
#include "core/log.h"
#include "core/status.h"
#include "server/net.h"

/* The schema: one static table, in documentation order. */
const fc_config_key *dcfg_schema(size_t *n);

/* Names of a client (fedctl client add): 1..DCFG_NAME_MAX characters of [A-Za-z0-9._-]. */
#define DCFG_NAME_MAX 64
int dcfg_valid_client_name(const char *name);

typedef enum dcfg_round_mode { DCFG_ROUND_SYNC = 0, DCFG_ROUND_ASYNC = 1 } dcfg_round_mode;
typedef enum dcfg_log_format { DCFG_LOG_LOGFMT = 0, DCFG_LOG_JSON = 1 } dcfg_log_format;

/* The effective configuration. Strings point into the loaded fc_config or into storage owned
 * by the dcfg; all stay valid until dcfg_free. Durations are milliseconds, sizes bytes. */
typedef struct dcfg {
    fc_config *cfg;          /* owned; the source of every value (for dumps and messages) */
    const char *config_path; /* the --config argument */
    struct {
        const char *listen; /* numeric IPv4/IPv6 address */
        int port;           /* 0..65535; 0 picks a free port */
        const char *data_dir;
        fc_log_level log_level;
        dcfg_log_format log_format;
    } server;
    net_tls_config tls; /* cert_file, key_file, ca_file (NULL when unset), mtls, min_version */
    struct {
        dcfg_round_mode mode;
        int64_t min_clients, clients_per_round, over_select, min_updates;
        int64_t max_rounds; /* 0 = unlimited */
        int64_t eval_every; /* 0 = never */
        int64_t round_timeout_ms;
        int64_t seed;
        double mu;
        const char *initial_model; /* NULL when unset */
        /* mode = async (FedBuff): see docs/rounds.md */
        int64_t buffer_size, concurrency, max_staleness;
    } round;
    struct {
        const agg_rule *rule;
        agg_params params; /* validated against rule->params; items owned by the dcfg */
    } aggregator;
    struct {
        const agg_opt *opt;
        agg_params params; /* validated against opt->params */
    } optimizer;
    struct {
        const char *db; /* [storage] db, or DATA_DIR/fedcoord.db when unset */
        int64_t keep_last, keep_every;
        uint64_t staging_memory, staging_disk;
    } storage;
    struct {
        int enabled;
        const char *listen;
        int port;
        int tls;                      /* serve HTTPS with the [tls] certificate and key */
        const char *admin_token_file; /* NULL when unset: control endpoints refused */
        int auth_reads;               /* reads need the admin token too */
    } http;
    struct {
        net_limits net; /* every field comes from a [limits] key, see dcfg_schema */
        uint64_t max_frame;
        uint64_t max_update_bytes;
        int64_t max_num_examples;
        double norm_bound; /* 0 = off */
    } limits;
    /* private */
    char *db_owned;
    agg_kv *kv_owned[2];
    char *kv_text[2];
} dcfg;

/* What dcfg_parse_args found on the command line. */
typedef struct dcfg_args {
    const char *config_path; /* NULL if --config was not given */
    const char **sets;       /* the --set arguments, in order (borrowed from argv; array owned) */
    size_t n_sets;
    int check_config, help, version;
} dcfg_args;

/* Parses argv (argv[0] is the program). On success *out holds the arguments; free its sets
 * array with dcfg_args_free. FC_ERR_CONFIG for an unknown option, a missing argument value,
 * or a missing --config (unless --help or --version). FC_ERR_NOMEM. */
fc_status dcfg_parse_args(int argc, char **argv, dcfg_args *out, fc_error *err);
void dcfg_args_free(dcfg_args *a);

/* Loads the configuration: schema defaults, then the file, then the --set overrides (which win
 * whatever their position), then the required keys, the cross-key constraints, the readability
 * of every file named, and the aggregator and optimizer parameters. Every error message names
 * where the offending value came from ("PATH:LINE", "--set" or "default"). On success *out
 * owns a dcfg that dcfg_free frees. Returns FC_OK, FC_ERR_CONFIG, FC_ERR_IO (the file cannot
 * be read) or FC_ERR_NOMEM. Blocks on the file reads. */
fc_status dcfg_load(const dcfg_args *args, dcfg **out, fc_error *err);
void dcfg_free(dcfg *c);

/* dcfg_load for configuration text already in memory (len bytes; name is used in messages and
 * as config_path, and must outlive the dcfg, as must sets). The files the text names are still
 * checked. Same errors as dcfg_load except FC_ERR_IO. */
fc_status dcfg_load_text(const char *name, const char *text, size_t len, const char *const *sets,
                         size_t n_sets, dcfg **out, fc_error *err);

/* The effective configuration as INI text that loads back (fc_config_dump). */
fc_status dcfg_dump(const dcfg *c, fc_buf *out);

/* The daemon main's front half. Parses argv and acts on --help / --version (text on out, exit
 * 0), --check-config (the effective configuration on out and exit 0, or one line
 * "fedcoord: ERROR" on errout and exit 2), and errors (one line on errout, exit 2; 1 for out
 * of memory). Returns DCFG_CONTINUE with *cfg_out set (the caller frees it) when the daemon
 * should run, else the process exit status; *cfg_out is then NULL. */
#define DCFG_CONTINUE (-1)
int dcfg_main(int argc, char **argv, FILE *out, FILE *errout, dcfg **cfg_out);

#endif
