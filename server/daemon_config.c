/* daemon_config.c: the daemon's configuration schema, command line and cross-key checks.
 *
 * It owns the one table of keys the daemon reads (docs/configuration.md is generated from it)
 * and the conversion of a loaded fc_config into the typed dcfg. It never creates folders or
 * files, never opens sockets or databases and never logs; the only I/O is reading the
 * configuration file and checking that the files it names are readable.
 */
#include "server/daemon_config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/alloc.h"
#include "proto/frame.h"

#ifndef FC_VERSION
#define FC_VERSION "0.1.0"
#endif

static const char *const log_levels[] = {"debug", "info", "warn", "error", NULL};
static const char *const log_formats[] = {"logfmt", "json", NULL};
static const char *const mtls_modes[] = {"off", "optional", "require", NULL};
static const char *const tls_versions[] = {"1.2", "1.3", NULL};
static const char *const round_modes[] = {"sync", "async", NULL};
static const char *const optimizers[] = {"sgd", "adam", "yogi", "adagrad", NULL};

/* The daemon's keys. Defaults of [limits] equal net_limits_default (a test checks this). */
static const fc_config_key schema[] = {
    /* [server] */
    {"server", "listen", FC_CONFIG_STRING, "0.0.0.0", NULL, NULL, NULL, 0,
     "numeric IPv4 or IPv6 address the client port listens on (\"::\" for every IPv6 address)"},
    {"server", "port", FC_CONFIG_INT, "7443", "0", "65535", NULL, 0,
     "TCP port for clients; 0 picks a free port (logged at start)"},
    {"server", "data_dir", FC_CONFIG_PATH, NULL, NULL, NULL, NULL, FC_CONFIG_REQUIRED,
     "folder for the database and staging files; created if missing (its parent must exist)"},
    {"server", "log_level", FC_CONFIG_ENUM, "info", NULL, NULL, log_levels, 0,
     "lowest level of log lines written to stderr"},
    {"server", "log_format", FC_CONFIG_ENUM, "logfmt", NULL, NULL, log_formats, 0,
     "log line format on stderr: logfmt (key=value) or json (one object per line)"},
    /* [tls] */
    {"tls", "cert", FC_CONFIG_PATH, NULL, NULL, NULL, NULL, FC_CONFIG_REQUIRED,
     "PEM certificate chain of the server, leaf first; must be readable"},
    {"tls", "key", FC_CONFIG_PATH, NULL, NULL, NULL, NULL, FC_CONFIG_REQUIRED,
     "PEM private key of the leaf certificate; must be readable"},
    {"tls", "ca", FC_CONFIG_PATH, NULL, NULL, NULL, NULL, 0,
     "PEM CA bundle that client certificates must chain to; required unless client_auth = off"},
    {"tls", "client_auth", FC_CONFIG_ENUM, "off", NULL, NULL, mtls_modes, 0,
     "mutual TLS: off (tokens only), optional or require a client certificate; a verified "
     "certificate's subject CN names the client"},
    {"tls", "min_version", FC_CONFIG_ENUM, "1.3", NULL, NULL, tls_versions, 0,
     "lowest TLS protocol version accepted"},
    /* [round] */
    {"round", "mode", FC_CONFIG_ENUM, "sync", NULL, NULL, round_modes, 0,
     "sync: rounds of selected clients; async: FedBuff, clients train whenever idle and each "
     "buffer_size updates commit a version (needs [aggregator] rule = fedbuff)"},
    {"round", "min_clients", FC_CONFIG_INT, "2", "1", "100000", NULL, 0,
     "connected, idle, authorised clients needed before a round starts"},
    {"round", "clients_per_round", FC_CONFIG_INT, "2", "1", "100000", NULL, 0,
     "clients a round selects (fewer if fewer are eligible)"},
    {"round", "over_select", FC_CONFIG_INT, "0", "0", "100000", NULL, 0,
     "extra clients selected beyond clients_per_round; the round closes once "
     "clients_per_round updates are in"},
    {"round", "min_updates", FC_CONFIG_INT, "2", "1", "100000", NULL, 0,
     "quorum: accepted updates needed at the deadline, else the round fails; at most "
     "min_clients and clients_per_round"},
    {"round", "round_timeout", FC_CONFIG_DURATION, "10m", "1s", "7d", NULL, 0,
     "deadline of a round, counted from the tasks being sent"},
    {"round", "max_rounds", FC_CONFIG_INT, "0", "0", "1000000000", NULL, 0,
     "stop after this many committed training rounds (and the evaluation of the last version, when eval_every asks for it); failed and evaluation rounds do not count; 0 = no limit"},
    {"round", "eval_every", FC_CONFIG_INT, "0", "0", "1000000", NULL, 0,
     "every Nth round is an evaluation round; 0 = never"},
    {"round", "seed", FC_CONFIG_INT, "0", NULL, NULL, NULL, 0,
     "seed of the client-selection PRNG; the same seed and clients give the same selection"},
    {"round", "mu", FC_CONFIG_DOUBLE, "0", "0", "1000", NULL, 0,
     "FedProx proximal weight sent to clients with each task; 0 = plain local training"},
    {"round", "buffer_size", FC_CONFIG_INT, "10", "1", "100000", NULL, 0,
     "async: accepted updates per committed version (FedBuff's K)"},
    {"round", "concurrency", FC_CONFIG_INT, "100", "1", "100000", NULL, 0,
     "async: clients training at once; an idle client gets a task while fewer are out"},
    {"round", "max_staleness", FC_CONFIG_INT, "20", "0", "1000000000", NULL, 0,
     "async: an update trained from a version more than this many versions old is refused"},
    {"round", "initial_model", FC_CONFIG_PATH, NULL, NULL, NULL, NULL, 0,
     "safetensors file of the first model; unset: the first client to connect proposes its "
     "tensors. Used only while the database holds no model"},
    /* [aggregator] */
    {"aggregator", "rule", FC_CONFIG_STRING, "fedavg", NULL, NULL, NULL, 0,
     "aggregation rule, one of the registered rules (docs/aggregators.md); an unknown name "
     "is an error that lists them"},
    {"aggregator", "params", FC_CONFIG_STRING, "", NULL, NULL, NULL, 0,
     "the rule's parameters as KEY=VALUE pairs separated by commas, e.g. \"tau=5,iters=3\"; "
     "checked against the rule at load"},
    /* [optimizer] */
    {"optimizer", "name", FC_CONFIG_ENUM, "sgd", NULL, NULL, optimizers, 0,
     "server optimizer applied to the aggregate (sgd with lr=1 is plain FedAvg)"},
    {"optimizer", "params", FC_CONFIG_STRING, "", NULL, NULL, NULL, 0,
     "the optimizer's parameters as KEY=VALUE pairs separated by commas, e.g. "
     "\"lr=0.1,beta1=0.9\""},
    /* [storage] */
    {"storage", "db", FC_CONFIG_PATH, NULL, NULL, NULL, NULL, 0,
     "SQLite database file; unset: DATA_DIR/fedcoord.db"},
    {"storage", "keep_last", FC_CONFIG_INT, "10", "1", "1000000000", NULL, 0,
     "model versions whose tensors are kept, newest first (older ones keep their metadata)"},
    {"storage", "keep_every", FC_CONFIG_INT, "0", "0", "1000000000", NULL, 0,
     "also keep every version that is a multiple of this; 0 = off"},
    {"storage", "staging_memory", FC_CONFIG_SIZE, "256MiB", "1MiB", NULL, NULL, 0,
     "memory for uploads in progress and for updates waiting to be folded in client-id "
     "order, over all clients; past it, chunks spill to DATA_DIR/staging. Released buffers "
     "are kept within it for the next uploads of their size, for 30 s"},
    {"storage", "staging_disk", FC_CONFIG_SIZE, "4GiB", "0", NULL, NULL, 0,
     "disk for spilled uploads; past it the daemon stops reading uploads until space frees; "
     "0 = no spilling"},
    /* [http] */
    {"http", "enabled", FC_CONFIG_BOOL, "true", NULL, NULL, NULL, 0,
     "serve the operator HTTP API and dashboard"},
    {"http", "listen", FC_CONFIG_STRING, "127.0.0.1", NULL, NULL, NULL, 0,
     "numeric address of the HTTP API; a non-loopback address requires tls = true"},
    {"http", "port", FC_CONFIG_INT, "7080", "0", "65535", NULL, 0,
     "TCP port of the HTTP API; 0 picks a free port"},
    {"http", "tls", FC_CONFIG_BOOL, "false", NULL, NULL, NULL, 0,
     "serve HTTPS with the [tls] certificate and key"},
    {"http", "admin_token_file", FC_CONFIG_PATH, NULL, NULL, NULL, NULL, 0,
     "file holding the bearer token for POST /v1/control/*; unset: control endpoints refused"},
    {"http", "auth_reads", FC_CONFIG_BOOL, "false", NULL, NULL, NULL, 0,
     "also require the admin token for every read endpoint except /healthz and /readyz"},
    /* [limits]: the first nine map 1:1 onto net_limits */
    {"limits", "handshake_timeout", FC_CONFIG_DURATION, "10s", "0", "1h", NULL, 0,
     "time from accept to a finished TLS handshake; 0 = no limit"},
    {"limits", "idle_timeout", FC_CONFIG_DURATION, "2m", "0", "1d", NULL, 0,
     "a connection that sends nothing this long is closed; 0 = no limit"},
    {"limits", "min_rate", FC_CONFIG_SIZE, "1KiB", "0", "1GiB", NULL, 0,
     "bytes per second a half-received frame must progress at (slow-loris guard); 0 = off"},
    {"limits", "rate_window", FC_CONFIG_DURATION, "10s", "100ms", "1h", NULL, 0,
     "window over which min_rate is measured"},
    {"limits", "max_connections", FC_CONFIG_INT, "1024", "0", "1000000", NULL, 0,
     "live client connections; 0 = no limit"},
    {"limits", "max_connections_per_peer", FC_CONFIG_INT, "16", "0", "1000000", NULL, 0,
     "live connections from one IPv4 address or IPv6 /64; 0 = no limit"},
    {"limits", "output_high_water", FC_CONFIG_SIZE, "4MiB", "4KiB", "1GiB", NULL, 0,
     "queued output to one connection above which the daemon stops producing for it"},
    {"limits", "max_output", FC_CONFIG_SIZE, "64MiB", "4KiB", "16GiB", NULL, 0,
     "queued output to one connection above which it is closed"},
    {"limits", "close_linger", FC_CONFIG_DURATION, "2s", "0", "1m", NULL, 0,
     "time a closing connection gets to flush its output"},
    {"limits", "max_frame", FC_CONFIG_SIZE, "4MiB", "1100KiB", "4095MiB", NULL, 0,
     "largest protocol frame accepted (must hold a 1 MiB chunk and its header)"},
    {"limits", "max_update_bytes", FC_CONFIG_SIZE, "1GiB", "1KiB", NULL, NULL, 0,
     "largest update upload; a larger one is refused before staging"},
    {"limits", "max_num_examples", FC_CONFIG_INT, "1000000000", "1", NULL, NULL, 0,
     "largest num_examples an update may claim"},
    {"limits", "norm_bound", FC_CONFIG_DOUBLE, "0", "0", NULL, NULL, 0,
     "updates whose L2 norm exceeds this are rejected; 0 = off"},
};

const fc_config_key *dcfg_schema(size_t *n) {
    *n = sizeof schema / sizeof schema[0];
    return schema;
}

int dcfg_valid_client_name(const char *name) {
    size_t len = name ? strlen(name) : 0;
    if (len == 0 || len > DCFG_NAME_MAX)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '-';
        if (!ok)
            return 0;
    }
    return 1;
}

/* ---- command line ---- */

static const char usage_text[] =
    "usage: fedcoord --config FILE [--set SECTION.KEY=VALUE]... [--check-config]\n"
    "       fedcoord --help | --version\n"
    "\n"
    "  --config FILE     the INI configuration (docs/configuration.md lists every key)\n"
    "  --set S.K=V       override one key; repeatable; wins over the file\n"
    "  --check-config    print the effective configuration and exit 0, or the error and exit 2\n"
    "  --help, --version\n";

void dcfg_args_free(dcfg_args *a) {
    if (!a)
        return;
    fc_free(a->sets);
    a->sets = NULL;
    a->n_sets = 0;
}

/* "--opt VALUE" or "--opt=VALUE": sets *val and advances *i. 0 if argv[*i] is not opt. */
static int take_value(int argc, char **argv, int *i, const char *opt, const char **val,
                      fc_status *st, fc_error *err) {
    const char *a = argv[*i];
    size_t ol = strlen(opt);
    if (strncmp(a, opt, ol) != 0)
        return 0;
    if (a[ol] == '=') {
        *val = a + ol + 1;
        return 1;
    }
    if (a[ol] != '\0')
        return 0;
    if (*i + 1 >= argc) {
        *st = fc_error_set(err, FC_ERR_CONFIG, "%s needs a value", opt);
        return 1;
    }
    *i += 1;
    *val = argv[*i];
    return 1;
}

fc_status dcfg_parse_args(int argc, char **argv, dcfg_args *out, fc_error *err) {
    memset(out, 0, sizeof *out);
    if (argc > 1) {
        out->sets = fc_calloc((size_t)argc, sizeof *out->sets);
        if (!out->sets)
            return fc_error_set(err, FC_ERR_NOMEM, "out of memory for the command line");
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = NULL;
        fc_status st = FC_OK;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            out->help = 1;
        } else if (strcmp(a, "--version") == 0) {
            out->version = 1;
        } else if (strcmp(a, "--check-config") == 0) {
            out->check_config = 1;
        } else if (take_value(argc, argv, &i, "--config", &val, &st, err)) {
            if (st != FC_OK)
                goto fail;
            if (out->config_path) {
                st = fc_error_set(err, FC_ERR_CONFIG, "--config given twice");
                goto fail;
            }
            if (!*val) {
                st = fc_error_set(err, FC_ERR_CONFIG, "--config needs a file name");
                goto fail;
            }
            out->config_path = val;
        } else if (take_value(argc, argv, &i, "--set", &val, &st, err)) {
            if (st != FC_OK)
                goto fail;
            out->sets[out->n_sets++] = val;
        } else {
            st = fc_error_set(err, FC_ERR_CONFIG, "unknown argument '%s' (see --help)", a);
            goto fail;
        }
        continue;
    fail:
        dcfg_args_free(out);
        return st;
    }
    if (!out->config_path && !out->help && !out->version) {
        dcfg_args_free(out);
        return fc_error_set(err, FC_ERR_CONFIG, "--config FILE is required (see --help)");
    }
    return FC_OK;
}

/* ---- loading ---- */

/* Where a key's effective value came from, for messages: "f.ini:3", "--set", "default". */
static const char *where(const fc_config *cfg, const char *section, const char *key) {
    const char *w = NULL;
    fc_config_source_of(cfg, section, key, &w);
    return w ? w : "default";
}

/* Fails with "WHERE: [section] key = "value": why". */
__attribute__((format(printf, 5, 6))) static fc_status key_error(const fc_config *cfg,
                                                                  const char *section,
                                                                  const char *key, fc_error *err,
                                                                  const char *fmt, ...) {
    char why[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    return fc_error_set(err, FC_ERR_CONFIG, "%s: [%s] %s: %s", where(cfg, section, key), section,
                        key, why);
}

static const char *opt_path(const fc_config *cfg, const char *section, const char *key) {
    const char *p = fc_config_get_path(cfg, section, key);
    return p && *p ? p : NULL;
}

/* A regular file this process can read. */
static fc_status check_readable(const fc_config *cfg, const char *section, const char *key,
                                fc_error *err) {
    const char *p = opt_path(cfg, section, key);
    if (!p)
        return FC_OK;
    struct stat sb;
    if (stat(p, &sb) != 0)
        return key_error(cfg, section, key, err, "'%s': %s", p, strerror(errno));
    if (!S_ISREG(sb.st_mode))
        return key_error(cfg, section, key, err, "'%s' is not a regular file", p);
    if (access(p, R_OK) != 0)
        return key_error(cfg, section, key, err, "'%s' is not readable: %s", p, strerror(errno));
    return FC_OK;
}

/* data_dir: an existing writable folder, or a missing one whose parent is a folder. */
static fc_status check_data_dir(const fc_config *cfg, fc_error *err) {
    const char *p = fc_config_get_path(cfg, "server", "data_dir");
    struct stat sb;
    if (stat(p, &sb) == 0) {
        if (!S_ISDIR(sb.st_mode))
            return key_error(cfg, "server", "data_dir", err, "'%s' exists and is not a folder",
                             p);
        if (access(p, W_OK | X_OK) != 0)
            return key_error(cfg, "server", "data_dir", err, "'%s' is not writable: %s", p,
                             strerror(errno));
        return FC_OK;
    }
    if (errno != ENOENT)
        return key_error(cfg, "server", "data_dir", err, "'%s': %s", p, strerror(errno));
    char parent[4096];
    size_t len = strlen(p);
    if (len >= sizeof parent)
        return key_error(cfg, "server", "data_dir", err, "path is longer than %zu bytes",
                         sizeof parent - 1);
    memcpy(parent, p, len + 1);
    while (len > 1 && parent[len - 1] == '/')
        parent[--len] = '\0';
    char *slash = strrchr(parent, '/');
    if (!slash)
        strcpy(parent, ".");
    else if (slash == parent)
        parent[1] = '\0';
    else
        *slash = '\0';
    if (stat(parent, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return key_error(cfg, "server", "data_dir", err,
                         "'%s' does not exist and neither does its parent folder '%s'", p, parent);
    return FC_OK;
}

static int parse_address(const char *s, int *loopback) {
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, s, &a4) == 1) {
        *loopback = (ntohl(a4.s_addr) >> 24) == 127;
        return 1;
    }
    if (inet_pton(AF_INET6, s, &a6) == 1) {
        *loopback = IN6_IS_ADDR_LOOPBACK(&a6);
        return 1;
    }
    return 0;
}

static fc_status check_address(const fc_config *cfg, const char *section, const char *key,
                               int *loopback, fc_error *err) {
    const char *s = fc_config_get_string(cfg, section, key);
    if (!parse_address(s, loopback))
        return key_error(cfg, section, key, err,
                         "\"%s\" is not a numeric IPv4 or IPv6 address (e.g. 0.0.0.0, ::, "
                         "127.0.0.1)",
                         s);
    return FC_OK;
}

static bool blank(char c) { return c == ' ' || c == '\t'; }

/* Splits "k=v, k2=v2" (a copy in *text_out) into kv pairs in *kv_out and checks them against
 * specs with agg_params_parse. */
static fc_status parse_params(const fc_config *cfg, const char *section, const char *what,
                              const agg_param_spec *specs, agg_params *out, char **text_out,
                              agg_kv **kv_out, fc_error *err) {
    const char *src = fc_config_get_string(cfg, section, "params");
    size_t len = strlen(src), nitems = 1, nspecs = 0;
    char *text = fc_strdup(src);
    if (!text)
        return fc_error_set(err, FC_ERR_NOMEM, "out of memory for [%s] params", section);
    *text_out = text;
    for (size_t i = 0; i < len; i++)
        nitems += text[i] == ',';
    agg_kv *kv = fc_calloc(nitems, sizeof *kv);
    if (!kv)
        return fc_error_set(err, FC_ERR_NOMEM, "out of memory for [%s] params", section);
    *kv_out = kv;
    size_t n = 0;
    char *p = text;
    while (1) {
        char *end = strchr(p, ',');
        if (end)
            *end = '\0';
        while (blank(*p))
            p++;
        char *e = p + strlen(p);
        while (e > p && blank(e[-1]))
            *--e = '\0';
        if (*p) {
            char *eq = strchr(p, '=');
            if (!eq || eq == p)
                return key_error(cfg, section, "params", err,
                                 "\"%s\" is not KEY=VALUE (pairs are separated by commas)", p);
            char *k_end = eq;
            while (k_end > p && blank(k_end[-1]))
                k_end--;
            *k_end = '\0';
            char *v = eq + 1;
            while (blank(*v))
                v++;
            kv[n].key = p;
            kv[n].value = v;
            n++;
        } else if (end || n > 0) {
            return key_error(cfg, section, "params", err, "empty KEY=VALUE pair in \"%s\"", src);
        }
        if (!end)
            break;
        p = end + 1;
    }
    out->items = kv;
    out->count = n;
    while (specs && specs[nspecs].key)
        nspecs++;
    agg_value *vals = fc_calloc(nspecs ? nspecs : 1, sizeof *vals);
    if (!vals)
        return fc_error_set(err, FC_ERR_NOMEM, "out of memory for [%s] params", section);
    fc_error perr = {0};
    fc_status st = agg_params_parse(what, specs, out, vals, &perr);
    fc_free(vals);
    if (st == FC_ERR_NOMEM)
        return fc_error_set(err, st, "%s", fc_error_text(&perr));
    if (st != FC_OK)
        return key_error(cfg, section, "params", err, "%s", fc_error_text(&perr));
    return FC_OK;
}

/* a <= b, else an error at a naming b and its origin. */
static fc_status check_le(const fc_config *cfg, const char *sa, const char *ka, const char *sb,
                          const char *kb, fc_error *err) {
    int64_t a = fc_config_get_int(cfg, sa, ka), b = fc_config_get_int(cfg, sb, kb);
    if (a <= b)
        return FC_OK;
    return key_error(cfg, sa, ka, err, "%lld must not exceed [%s] %s = %lld (%s)", (long long)a,
                     sb, kb, (long long)b, where(cfg, sb, kb));
}

static fc_status check_and_fill(dcfg *c, fc_error *err) {
    const fc_config *cfg = c->cfg;
    fc_status st;
    int loopback = 0;

    if ((st = fc_config_check_required(cfg, err)) != FC_OK)
        return st;

    /* [server] */
    if ((st = check_address(cfg, "server", "listen", &loopback, err)) != FC_OK)
        return st;
    c->server.listen = fc_config_get_string(cfg, "server", "listen");
    c->server.port = (int)fc_config_get_int(cfg, "server", "port");
    if ((st = check_data_dir(cfg, err)) != FC_OK)
        return st;
    c->server.data_dir = fc_config_get_path(cfg, "server", "data_dir");
    c->server.log_level = (fc_log_level)fc_config_get_enum_index(cfg, "server", "log_level");
    c->server.log_format = (dcfg_log_format)fc_config_get_enum_index(cfg, "server", "log_format");

    /* [tls] */
    if ((st = check_readable(cfg, "tls", "cert", err)) != FC_OK ||
        (st = check_readable(cfg, "tls", "key", err)) != FC_OK ||
        (st = check_readable(cfg, "tls", "ca", err)) != FC_OK)
        return st;
    c->tls.cert_file = opt_path(cfg, "tls", "cert");
    c->tls.key_file = opt_path(cfg, "tls", "key");
    c->tls.ca_file = opt_path(cfg, "tls", "ca");
    fc_error perr = {0};
    if (net_mtls_parse(fc_config_get_enum(cfg, "tls", "client_auth"), &c->tls.mtls, &perr) !=
            FC_OK ||
        net_tls_parse_version(fc_config_get_enum(cfg, "tls", "min_version"), &c->tls.min_version,
                              &perr) != FC_OK)
        return fc_error_set(err, FC_ERR_CONFIG, "[tls]: %s", fc_error_text(&perr));
    if (c->tls.mtls != NET_MTLS_OFF && !c->tls.ca_file)
        return key_error(cfg, "tls", "client_auth", err,
                         "%s needs [tls] ca, the CA bundle client certificates chain to",
                         fc_config_get_enum(cfg, "tls", "client_auth"));

    /* [round] */
    c->round.mode = strcmp(fc_config_get_enum(cfg, "round", "mode"), "async") == 0
                        ? DCFG_ROUND_ASYNC
                        : DCFG_ROUND_SYNC;
    if (c->round.mode == DCFG_ROUND_SYNC &&
        ((st = check_le(cfg, "round", "min_updates", "round", "clients_per_round", err)) != FC_OK ||
         (st = check_le(cfg, "round", "min_updates", "round", "min_clients", err)) != FC_OK))
        return st;
    c->round.buffer_size = fc_config_get_int(cfg, "round", "buffer_size");
    c->round.concurrency = fc_config_get_int(cfg, "round", "concurrency");
    c->round.max_staleness = fc_config_get_int(cfg, "round", "max_staleness");
    c->round.min_clients = fc_config_get_int(cfg, "round", "min_clients");
    c->round.clients_per_round = fc_config_get_int(cfg, "round", "clients_per_round");
    c->round.over_select = fc_config_get_int(cfg, "round", "over_select");
    c->round.min_updates = fc_config_get_int(cfg, "round", "min_updates");
    c->round.round_timeout_ms = fc_config_get_duration_ms(cfg, "round", "round_timeout");
    c->round.max_rounds = fc_config_get_int(cfg, "round", "max_rounds");
    c->round.eval_every = fc_config_get_int(cfg, "round", "eval_every");
    c->round.seed = fc_config_get_int(cfg, "round", "seed");
    c->round.mu = fc_config_get_double(cfg, "round", "mu");
    if ((st = check_readable(cfg, "round", "initial_model", err)) != FC_OK)
        return st;
    c->round.initial_model = opt_path(cfg, "round", "initial_model");

    /* [aggregator], [optimizer] */
    const char *rule_name = fc_config_get_string(cfg, "aggregator", "rule");
    c->aggregator.rule = agg_rule_find(rule_name);
    if (!c->aggregator.rule)
        return key_error(cfg, "aggregator", "rule", err, "unknown rule \"%s\"; known rules: %s",
                         rule_name, agg_rule_names());
    int fedbuff = strcmp(c->aggregator.rule->name, "fedbuff") == 0;
    if (c->round.mode == DCFG_ROUND_ASYNC && !fedbuff)
        return key_error(cfg, "aggregator", "rule", err,
                         "\"%s\" cannot run with [round] mode = async (%s): the asynchronous "
                         "buffer is the rule fedbuff",
                         rule_name, where(cfg, "round", "mode"));
    if (c->round.mode == DCFG_ROUND_SYNC && fedbuff)
        return key_error(cfg, "aggregator", "rule", err,
                         "fedbuff is the buffer of [round] mode = async (%s is sync)",
                         where(cfg, "round", "mode"));
    if (c->round.mode == DCFG_ROUND_ASYNC && c->round.eval_every)
        return key_error(cfg, "round", "eval_every", err,
                         "evaluation rounds exist only in mode = sync; set 0 with mode = async");
    char what[96];
    snprintf(what, sizeof what, "rule %s", c->aggregator.rule->name);
    if ((st = parse_params(cfg, "aggregator", what, c->aggregator.rule->params,
                           &c->aggregator.params, &c->kv_text[0], &c->kv_owned[0], err)) != FC_OK)
        return st;
    const char *opt_name = fc_config_get_enum(cfg, "optimizer", "name");
    c->optimizer.opt = agg_opt_find(opt_name);
    if (!c->optimizer.opt)
        return key_error(cfg, "optimizer", "name", err, "optimizer \"%s\" is not built in; known: %s",
                         opt_name, agg_opt_names());
    snprintf(what, sizeof what, "optimizer %s", c->optimizer.opt->name);
    if ((st = parse_params(cfg, "optimizer", what, c->optimizer.opt->params,
                           &c->optimizer.params, &c->kv_text[1], &c->kv_owned[1], err)) != FC_OK)
        return st;

    /* [storage] */
    const char *db = opt_path(cfg, "storage", "db");
    if (!db) {
        size_t n = strlen(c->server.data_dir) + sizeof "/fedcoord.db";
        c->db_owned = fc_malloc(n);
        if (!c->db_owned)
            return fc_error_set(err, FC_ERR_NOMEM, "out of memory for [storage] db");
        snprintf(c->db_owned, n, "%s/fedcoord.db", c->server.data_dir);
        db = c->db_owned;
    }
    c->storage.db = db;
    c->storage.keep_last = fc_config_get_int(cfg, "storage", "keep_last");
    c->storage.keep_every = fc_config_get_int(cfg, "storage", "keep_every");
    c->storage.staging_memory = fc_config_get_size(cfg, "storage", "staging_memory");
    c->storage.staging_disk = fc_config_get_size(cfg, "storage", "staging_disk");

    /* [http] */
    c->http.enabled = fc_config_get_bool(cfg, "http", "enabled");
    c->http.tls = fc_config_get_bool(cfg, "http", "tls");
    c->http.port = (int)fc_config_get_int(cfg, "http", "port");
    c->http.listen = fc_config_get_string(cfg, "http", "listen");
    if ((st = check_address(cfg, "http", "listen", &loopback, err)) != FC_OK)
        return st;
    if (c->http.enabled && !c->http.tls && !loopback)
        return key_error(cfg, "http", "listen", err,
                         "\"%s\" is not a loopback address, so [http] tls must be true (%s)",
                         c->http.listen, where(cfg, "http", "tls"));
    if ((st = check_readable(cfg, "http", "admin_token_file", err)) != FC_OK)
        return st;
    c->http.admin_token_file = opt_path(cfg, "http", "admin_token_file");
    c->http.auth_reads = fc_config_get_bool(cfg, "http", "auth_reads");
    if (c->http.enabled && c->http.auth_reads && !c->http.admin_token_file)
        return key_error(cfg, "http", "auth_reads", err,
                         "needs [http] admin_token_file: reads would be refused to everyone");
    if (c->http.enabled && c->server.port != 0 && c->http.port == c->server.port)
        return key_error(cfg, "http", "port", err, "%d is also [server] port (%s)", c->http.port,
                         where(cfg, "server", "port"));

    /* [limits] */
    net_limits *l = &c->limits.net;
    l->handshake_timeout_ms = (uint64_t)fc_config_get_duration_ms(cfg, "limits", "handshake_timeout");
    l->idle_timeout_ms = (uint64_t)fc_config_get_duration_ms(cfg, "limits", "idle_timeout");
    l->min_rate_bps = fc_config_get_size(cfg, "limits", "min_rate");
    l->rate_window_ms = (uint64_t)fc_config_get_duration_ms(cfg, "limits", "rate_window");
    l->max_connections = (size_t)fc_config_get_int(cfg, "limits", "max_connections");
    l->max_per_peer = (size_t)fc_config_get_int(cfg, "limits", "max_connections_per_peer");
    l->output_high_water = (size_t)fc_config_get_size(cfg, "limits", "output_high_water");
    l->max_output_bytes = (size_t)fc_config_get_size(cfg, "limits", "max_output");
    l->close_linger_ms = (uint64_t)fc_config_get_duration_ms(cfg, "limits", "close_linger");
    if (l->max_output_bytes < l->output_high_water)
        return key_error(cfg, "limits", "max_output", err,
                         "%llu bytes is below [limits] output_high_water = %llu (%s)",
                         (unsigned long long)l->max_output_bytes,
                         (unsigned long long)l->output_high_water,
                         where(cfg, "limits", "output_high_water"));
    if (l->max_connections != 0 && l->max_per_peer > l->max_connections)
        return key_error(cfg, "limits", "max_connections_per_peer", err,
                         "%zu exceeds [limits] max_connections = %zu (%s)", l->max_per_peer,
                         l->max_connections, where(cfg, "limits", "max_connections"));
    c->limits.max_frame = fc_config_get_size(cfg, "limits", "max_frame");
    c->limits.max_update_bytes = fc_config_get_size(cfg, "limits", "max_update_bytes");
    c->limits.max_num_examples = fc_config_get_int(cfg, "limits", "max_num_examples");
    c->limits.norm_bound = fc_config_get_double(cfg, "limits", "norm_bound");
    return FC_OK;
}

void dcfg_free(dcfg *c) {
    if (!c)
        return;
    fc_config_free(c->cfg);
    fc_free(c->db_owned);
    for (int i = 0; i < 2; i++) {
        fc_free(c->kv_owned[i]);
        fc_free(c->kv_text[i]);
    }
    fc_free(c);
}

/* The file at path, or text (len bytes) named path when text is not NULL. */
static fc_status load_from(const char *path, const char *text, size_t len,
                           const char *const *sets, size_t n_sets, dcfg **out, fc_error *err) {
    *out = NULL;
    dcfg *c = fc_calloc(1, sizeof *c);
    if (!c)
        return fc_error_set(err, FC_ERR_NOMEM, "out of memory for the configuration");
    c->config_path = path;
    fc_status st = fc_config_new(schema, sizeof schema / sizeof schema[0], &c->cfg, err);
    if (st != FC_OK)
        goto fail;
    for (size_t i = 0; i < n_sets; i++)
        if ((st = fc_config_set(c->cfg, sets[i], "--set", err)) != FC_OK)
            goto fail;
    st = text ? fc_config_load_string(c->cfg, path, text, len, err)
              : fc_config_load_file(c->cfg, path, err);
    if (st != FC_OK)
        goto fail;
    if ((st = check_and_fill(c, err)) != FC_OK)
        goto fail;
    *out = c;
    return FC_OK;
fail:
    dcfg_free(c);
    return st;
}

fc_status dcfg_load(const dcfg_args *args, dcfg **out, fc_error *err) {
    *out = NULL;
    if (!args->config_path)
        return fc_error_set(err, FC_ERR_CONFIG, "--config FILE is required");
    return load_from(args->config_path, NULL, 0, args->sets, args->n_sets, out, err);
}

fc_status dcfg_load_text(const char *name, const char *text, size_t len, const char *const *sets,
                         size_t n_sets, dcfg **out, fc_error *err) {
    return load_from(name, text, len, sets, n_sets, out, err);
}

fc_status dcfg_dump(const dcfg *c, fc_buf *out) { return fc_config_dump(c->cfg, out); }

int dcfg_main(int argc, char **argv, FILE *out, FILE *errout, dcfg **cfg_out) {
    *cfg_out = NULL;
    dcfg_args args;
    fc_error err = {0};
    fc_status st = dcfg_parse_args(argc, argv, &args, &err);
    if (st != FC_OK) {
        fprintf(errout, "fedcoord: %s\n", fc_error_text(&err));
        return st == FC_ERR_NOMEM ? 1 : 2;
    }
    if (args.help || args.version) {
        if (args.help)
            fputs(usage_text, out);
        else
            fprintf(out, "fedcoord %s\n", FC_VERSION);
        dcfg_args_free(&args);
        return 0;
    }
    dcfg *c = NULL;
    st = dcfg_load(&args, &c, &err);
    int check = args.check_config;
    dcfg_args_free(&args);
    if (st != FC_OK) {
        fprintf(errout, "fedcoord: %s\n", fc_error_text(&err));
        return st == FC_ERR_NOMEM ? 1 : 2;
    }
    if (!check) {
        *cfg_out = c;
        return DCFG_CONTINUE;
    }
    fc_buf text = {0};
    int rc = 0;
    if (dcfg_dump(c, &text) != FC_OK) {
        fprintf(errout, "fedcoord: out of memory for the configuration dump\n");
        rc = 1;
    } else if (fwrite(text.data, 1, text.len, out) != text.len || fflush(out) != 0) {
        fprintf(errout, "fedcoord: cannot write the configuration: %s\n", strerror(errno));
        rc = 1;
    }
    fc_buf_free(&text);
    dcfg_free(c);
    return rc;
}
