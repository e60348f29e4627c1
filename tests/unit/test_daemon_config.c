/* test_daemon_config.c: the daemon's configuration (server/daemon_config.c) as an operator
 * meets it: real files in the test folder, the command line, the error messages, the
 * cross-key checks, the rule and optimizer parameters, --check-config, and that
 * docs/configuration.md holds the table generated from the schema. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>

#include "core/alloc.h"
#include "proto/frame.h"
#include "server/daemon_config.h"
#include "tests/lib/testutil.h"

static char cert[512], key[512], ca[512], data_dir[512], model[512];

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

static int setup(void **state) {
    (void)state;
    write_file(fc_test_path(cert, sizeof cert, "server.crt"), "-----BEGIN CERTIFICATE-----\n");
    write_file(fc_test_path(key, sizeof key, "server.key"), "-----BEGIN PRIVATE KEY-----\n");
    write_file(fc_test_path(ca, sizeof ca, "ca.crt"), "-----BEGIN CERTIFICATE-----\n");
    write_file(fc_test_path(model, sizeof model, "init.safetensors"), "x");
    fc_test_path(data_dir, sizeof data_dir, "data");
    mkdir(data_dir, 0700);
    return 0;
}

/* Writes "<tmp>/NAME" with the minimal config (data_dir, cert, key) followed by `extra`. */
static char *write_config(char *path, size_t size, const char *name, const char *extra) {
    char text[8192];
    snprintf(text, sizeof text, "[server]\ndata_dir = %s\n[tls]\ncert = %s\nkey = %s\n%s",
             data_dir, cert, key, extra);
    write_file(fc_test_path(path, size, name), text);
    return path;
}

/* Loads PATH with the --set overrides (NULL-terminated); returns the status, fills err. */
static fc_status load(const char *path, const char *const *sets, dcfg **out, fc_error *err) {
    char *argv[32];
    int argc = 0;
    argv[argc++] = (char *)"fedcoord";
    argv[argc++] = (char *)"--config";
    argv[argc++] = (char *)path;
    for (size_t i = 0; sets && sets[i]; i++) {
        argv[argc++] = (char *)"--set";
        argv[argc++] = (char *)sets[i];
    }
    argv[argc] = NULL;
    dcfg_args args;
    fc_status st = dcfg_parse_args(argc, argv, &args, err);
    if (st != FC_OK)
        return st;
    st = dcfg_load(&args, out, err);
    dcfg_args_free(&args);
    return st;
}

static dcfg *load_ok(const char *path, const char *const *sets) {
    dcfg *c = NULL;
    fc_error err = {0};
    if (load(path, sets, &c, &err) != FC_OK)
        fail_msg("load %s: %s", path, fc_error_text(&err));
    return c;
}

/* Expects a FC_ERR_CONFIG whose message contains every one of the NULL-terminated parts. */
static void expect_error(const char *path, const char *const *sets, const char *part, ...) {
    dcfg *c = NULL;
    fc_error err = {0};
    fc_status st = load(path, sets, &c, &err);
    if (st == FC_OK) {
        dcfg_free(c);
        fail_msg("%s loaded, expected an error containing '%s'", path, part);
    }
    assert_null(c);
    assert_int_equal(st, FC_ERR_CONFIG);
    va_list ap;
    va_start(ap, part);
    for (const char *p = part; p; p = va_arg(ap, const char *))
        if (!strstr(fc_error_text(&err), p))
            fail_msg("error '%s' lacks '%s'", fc_error_text(&err), p);
    va_end(ap);
}

static void test_defaults_load_with_only_tls_files_and_data_dir(void **state) {
    (void)state;
    char path[512];
    dcfg *c = load_ok(write_config(path, sizeof path, "min.ini", ""), NULL);
    assert_string_equal(c->server.listen, "0.0.0.0");
    assert_int_equal(c->server.port, 7443);
    assert_string_equal(c->server.data_dir, data_dir);
    assert_int_equal(c->server.log_level, FC_LOG_INFO);
    assert_int_equal(c->server.log_format, DCFG_LOG_LOGFMT);
    assert_string_equal(c->tls.cert_file, cert);
    assert_string_equal(c->tls.key_file, key);
    assert_null(c->tls.ca_file);
    assert_int_equal(c->tls.mtls, NET_MTLS_OFF);
    assert_int_equal(c->tls.min_version, NET_TLS_1_3);
    assert_int_equal(c->round.mode, DCFG_ROUND_SYNC);
    assert_int_equal(c->round.min_clients, 2);
    assert_int_equal(c->round.clients_per_round, 2);
    assert_int_equal(c->round.min_updates, 2);
    assert_int_equal(c->round.over_select, 0);
    assert_int_equal(c->round.round_timeout_ms, 10 * 60 * 1000);
    assert_int_equal(c->round.max_rounds, 0);
    assert_int_equal(c->round.eval_every, 0);
    assert_null(c->round.initial_model);
    assert_string_equal(c->aggregator.rule->name, "fedavg");
    assert_int_equal(c->aggregator.params.count, 0);
    assert_string_equal(c->optimizer.opt->name, "sgd");
    char db[600];
    snprintf(db, sizeof db, "%s/fedcoord.db", data_dir);
    assert_string_equal(c->storage.db, db);
    assert_int_equal(c->storage.staging_memory, 256ull << 20);
    assert_int_equal(c->storage.staging_disk, 4ull << 30);
    assert_int_equal(c->http.enabled, 1);
    assert_string_equal(c->http.listen, "127.0.0.1");
    assert_int_equal(c->http.port, 7080);
    assert_int_equal(c->http.tls, 0);
    assert_null(c->http.admin_token_file);
    /* [limits] defaults are net's own defaults, field by field. */
    net_limits d;
    net_limits_default(&d);
    assert_int_equal(c->limits.net.handshake_timeout_ms, d.handshake_timeout_ms);
    assert_int_equal(c->limits.net.idle_timeout_ms, d.idle_timeout_ms);
    assert_int_equal(c->limits.net.min_rate_bps, d.min_rate_bps);
    assert_int_equal(c->limits.net.rate_window_ms, d.rate_window_ms);
    assert_int_equal(c->limits.net.max_connections, d.max_connections);
    assert_int_equal(c->limits.net.max_per_peer, d.max_per_peer);
    assert_int_equal(c->limits.net.output_high_water, d.output_high_water);
    assert_int_equal(c->limits.net.max_output_bytes, d.max_output_bytes);
    assert_int_equal(c->limits.net.close_linger_ms, d.close_linger_ms);
    assert_int_equal(c->limits.max_frame, FC_FRAME_MAX_DEFAULT);
    assert_true(c->limits.max_frame >= FC_CHUNK_MAX_DATA + FC_FRAME_CHUNK_HEADER_MAX);
    assert_true(c->limits.norm_bound == 0.0);
    dcfg_free(c);
}

static void test_every_section_is_read_into_the_struct(void **state) {
    (void)state;
    char path[512], extra[3000];
    snprintf(extra, sizeof extra,
             "ca = %s\nclient_auth = require\nmin_version = 1.2\n"
             "[server]\nlisten = ::\nport = 9443\nlog_level = debug\nlog_format = json\n"
             "[round]\nmin_clients = 8\nclients_per_round = 6\nover_select = 2\n"
             "min_updates = 4\nround_timeout = 90s\nmax_rounds = 100\neval_every = 5\n"
             "seed = -7\nmu = 0.01\ninitial_model = %s\n"
             "[aggregator]\nrule = centered_clip\nparams = tau=5, iters = 3\n"
             "[optimizer]\nname = adam\nparams = lr=0.01,beta1=0.8\n"
             "[storage]\ndb = %s/other.db\nkeep_last = 3\nkeep_every = 50\n"
             "staging_memory = 64MiB\nstaging_disk = 0\n"
             "[http]\nlisten = 0.0.0.0\nport = 8443\ntls = yes\nadmin_token_file = %s\n"
             "[limits]\nhandshake_timeout = 5s\nidle_timeout = 30s\nmin_rate = 2KiB\n"
             "rate_window = 3s\nmax_connections = 50\nmax_connections_per_peer = 4\n"
             "output_high_water = 1MiB\nmax_output = 8MiB\nclose_linger = 500ms\n"
             "max_frame = 8MiB\nmax_update_bytes = 100MiB\nmax_num_examples = 5000\n"
             "norm_bound = 12.5\n",
             ca, model, data_dir, key /* any readable file */);
    /* The extra text starts inside [tls] (write_config ends there). */
    dcfg *c = load_ok(write_config(path, sizeof path, "all.ini", extra), NULL);
    assert_string_equal(c->server.listen, "::");
    assert_int_equal(c->server.port, 9443);
    assert_int_equal(c->server.log_level, FC_LOG_DEBUG);
    assert_int_equal(c->server.log_format, DCFG_LOG_JSON);
    assert_string_equal(c->tls.ca_file, ca);
    assert_int_equal(c->tls.mtls, NET_MTLS_REQUIRE);
    assert_int_equal(c->tls.min_version, NET_TLS_1_2);
    assert_int_equal(c->round.min_clients, 8);
    assert_int_equal(c->round.clients_per_round, 6);
    assert_int_equal(c->round.over_select, 2);
    assert_int_equal(c->round.min_updates, 4);
    assert_int_equal(c->round.round_timeout_ms, 90000);
    assert_int_equal(c->round.max_rounds, 100);
    assert_int_equal(c->round.eval_every, 5);
    assert_int_equal(c->round.seed, -7);
    assert_true(c->round.mu == 0.01);
    assert_string_equal(c->round.initial_model, model);
    assert_string_equal(c->aggregator.rule->name, "centered_clip");
    assert_int_equal(c->aggregator.params.count, 2);
    assert_string_equal(c->aggregator.params.items[0].key, "tau");
    assert_string_equal(c->aggregator.params.items[0].value, "5");
    assert_string_equal(c->aggregator.params.items[1].key, "iters");
    assert_string_equal(c->aggregator.params.items[1].value, "3");
    assert_string_equal(c->optimizer.opt->name, "adam");
    assert_int_equal(c->optimizer.params.count, 2);
    assert_string_equal(c->optimizer.params.items[1].key, "beta1");
    assert_string_equal(c->optimizer.params.items[1].value, "0.8");
    char db[600];
    snprintf(db, sizeof db, "%s/other.db", data_dir);
    assert_string_equal(c->storage.db, db);
    assert_int_equal(c->storage.keep_last, 3);
    assert_int_equal(c->storage.keep_every, 50);
    assert_int_equal(c->storage.staging_memory, 64ull << 20);
    assert_int_equal(c->storage.staging_disk, 0);
    assert_string_equal(c->http.listen, "0.0.0.0");
    assert_int_equal(c->http.port, 8443);
    assert_int_equal(c->http.tls, 1);
    assert_string_equal(c->http.admin_token_file, key);
    assert_int_equal(c->limits.net.handshake_timeout_ms, 5000);
    assert_int_equal(c->limits.net.idle_timeout_ms, 30000);
    assert_int_equal(c->limits.net.min_rate_bps, 2048);
    assert_int_equal(c->limits.net.rate_window_ms, 3000);
    assert_int_equal(c->limits.net.max_connections, 50);
    assert_int_equal(c->limits.net.max_per_peer, 4);
    assert_int_equal(c->limits.net.output_high_water, 1u << 20);
    assert_int_equal(c->limits.net.max_output_bytes, 8u << 20);
    assert_int_equal(c->limits.net.close_linger_ms, 500);
    assert_int_equal(c->limits.max_frame, 8u << 20);
    assert_int_equal(c->limits.max_update_bytes, 100ull << 20);
    assert_int_equal(c->limits.max_num_examples, 5000);
    assert_true(c->limits.norm_bound == 12.5);
    dcfg_free(c);
}

static void test_set_overrides_the_file_whatever_the_order(void **state) {
    (void)state;
    char path[512];
    write_config(path, sizeof path, "set.ini", "[round]\nclients_per_round = 5\n");
    const char *sets[] = {"round.clients_per_round=9", "server.port=0", "http.enabled=false",
                          "server.port=1234", NULL};
    dcfg *c = load_ok(path, sets);
    assert_int_equal(c->round.clients_per_round, 9);
    assert_int_equal(c->server.port, 1234); /* the later --set wins */
    assert_int_equal(c->http.enabled, 0);
    const char *w = NULL;
    assert_int_equal(fc_config_source_of(c->cfg, "round", "clients_per_round", &w),
                     FC_CONFIG_FROM_OVERRIDE);
    assert_string_equal(w, "--set");
    dcfg_free(c);
}

static void test_errors_name_the_file_line_or_set(void **state) {
    (void)state;
    char path[512], where[600];
    /* Line numbers: 1 [server], 2 data_dir, 3 [tls], 4 cert, 5 key, 6 [round], 7 ... */
    write_config(path, sizeof path, "bad1.ini", "[round]\nmin_clients = -3\n");
    snprintf(where, sizeof where, "%s:7:", path);
    expect_error(path, NULL, where, "[round] min_clients", "1..100000", NULL);

    write_config(path, sizeof path, "bad2.ini", "[round]\nmin_clint = 3\n");
    snprintf(where, sizeof where, "%s:7:", path);
    expect_error(path, NULL, where, "min_clint", NULL);

    write_config(path, sizeof path, "bad3.ini", "[round]\nmode = async\n");
    expect_error(path, NULL, "mode", "async", "sync", NULL);

    write_config(path, sizeof path, "ok.ini", "");
    const char *sets[] = {"limits.max_frame=12", NULL};
    expect_error(path, sets, "--set", "[limits] max_frame", NULL);
    const char *sets2[] = {"nosuch.key=1", NULL};
    expect_error(path, sets2, "--set", "nosuch", NULL);

    /* A required key left out names itself. */
    write_file(fc_test_path(path, sizeof path, "nokey.ini"), "[server]\ndata_dir = /tmp\n");
    expect_error(path, NULL, "[tls] cert", NULL);

    /* A file that cannot be read is FC_ERR_IO naming it. */
    dcfg *c = NULL;
    fc_error err = {0};
    assert_int_equal(load(fc_test_path(path, sizeof path, "absent.ini"), NULL, &c, &err),
                     FC_ERR_IO);
    assert_non_null(strstr(fc_error_text(&err), "absent.ini"));
}

static void test_cross_key_constraints_name_both_keys(void **state) {
    (void)state;
    char path[512], where[600], extra[1024];
    write_config(path, sizeof path, "x1.ini", "[round]\nclients_per_round = 3\nmin_updates = 4\n");
    snprintf(where, sizeof where, "%s:8: [round] min_updates", path);
    char other[600];
    snprintf(other, sizeof other, "clients_per_round = 3 (%s:7)", path);
    expect_error(path, NULL, where, other, NULL);

    /* min_updates above min_clients could never reach quorum once a round started. */
    write_config(path, sizeof path, "x2.ini", "");
    const char *sets[] = {"round.min_clients=1", NULL};
    expect_error(path, sets, "[round] min_updates: 2 must not exceed [round] min_clients = 1 (--set)",
                 NULL);

    write_config(path, sizeof path, "x3.ini", "client_auth = optional\n");
    expect_error(path, NULL, "[tls] client_auth", "[tls] ca", NULL);

    write_config(path, sizeof path, "x4.ini", "[http]\nlisten = 0.0.0.0\n");
    expect_error(path, NULL, "[http] listen", "loopback", "tls", NULL);

    write_config(path, sizeof path, "x5.ini", "[http]\nport = 7443\n");
    expect_error(path, NULL, "[http] port", "[server] port", NULL);

    write_config(path, sizeof path, "x6.ini", "[server]\nlisten = localhost\n");
    expect_error(path, NULL, "[server] listen", "numeric", NULL);

    write_config(path, sizeof path, "x7.ini",
                 "[limits]\noutput_high_water = 8MiB\nmax_output = 4MiB\n");
    expect_error(path, NULL, "[limits] max_output", "output_high_water", NULL);

    write_config(path, sizeof path, "x8.ini",
                 "[limits]\nmax_connections = 4\nmax_connections_per_peer = 5\n");
    expect_error(path, NULL, "[limits] max_connections_per_peer", "max_connections = 4", NULL);

    /* Files named by the configuration must exist and be readable regular files. */
    snprintf(extra, sizeof extra, "ca = %s/nope.pem\n", data_dir);
    write_config(path, sizeof path, "x9.ini", extra);
    snprintf(where, sizeof where, "%s:6: [tls] ca", path);
    expect_error(path, NULL, where, "nope.pem", "No such file", NULL);
    snprintf(extra, sizeof extra, "[round]\ninitial_model = %s\n", data_dir);
    write_config(path, sizeof path, "x10.ini", extra);
    expect_error(path, NULL, "[round] initial_model", "not a regular file", NULL);
    const char *sets2[] = {"tls.key=/nonexistent/server.key", NULL};
    write_config(path, sizeof path, "x11.ini", "");
    expect_error(path, sets2, "--set: [tls] key", "/nonexistent/server.key", NULL);

    /* data_dir: a missing folder is fine (the daemon creates it) if its parent exists. */
    snprintf(extra, sizeof extra, "%s/new-sub", data_dir);
    char set_dd[1200];
    snprintf(set_dd, sizeof set_dd, "server.data_dir=%s", extra);
    const char *sets3[] = {set_dd, NULL};
    dcfg *c = load_ok(path, sets3);
    dcfg_free(c);
    snprintf(set_dd, sizeof set_dd, "server.data_dir=%s/a/b", data_dir);
    expect_error(path, sets3, "[server] data_dir", "parent", NULL);
    snprintf(set_dd, sizeof set_dd, "server.data_dir=%s", cert);
    expect_error(path, sets3, "[server] data_dir", "not a folder", NULL);
}

static void test_rule_and_optimizer_params_are_checked_at_load(void **state) {
    (void)state;
    char path[512], where[600];
    write_config(path, sizeof path, "p1.ini",
                 "[aggregator]\nrule = centered_clip\nparams = tau=5,bogus=1\n");
    snprintf(where, sizeof where, "%s:8: [aggregator] params", path);
    expect_error(path, NULL, where, "rule centered_clip", "unknown parameter 'bogus'", "accepted",
                 "tau", "iters", NULL);

    write_config(path, sizeof path, "p2.ini", "[aggregator]\nrule = centered_clip\nparams = tau\n");
    expect_error(path, NULL, "[aggregator] params", "\"tau\" is not KEY=VALUE", NULL);
    write_config(path, sizeof path, "p3.ini",
                 "[aggregator]\nrule = centered_clip\nparams = tau=1,,iters=2\n");
    expect_error(path, NULL, "[aggregator] params", "empty KEY=VALUE", NULL);
    write_config(path, sizeof path, "p4.ini",
                 "[aggregator]\nrule = centered_clip\nparams = tau=-1\n");
    expect_error(path, NULL, "[aggregator] params", "bad value for 'tau'", NULL);

    write_config(path, sizeof path, "p5.ini", "[aggregator]\nrule = krumm\n");
    snprintf(where, sizeof where, "%s:7: [aggregator] rule", path);
    expect_error(path, NULL, where, "unknown rule \"krumm\"", "fedavg", NULL);

    write_config(path, sizeof path, "p6.ini", "[optimizer]\nname = yogi\nparams = beta3=1\n");
    expect_error(path, NULL, "[optimizer] params", "optimizer yogi", "unknown parameter 'beta3'",
                 NULL);
    const char *sets[] = {"optimizer.params=lr=abc", NULL};
    write_config(path, sizeof path, "p7.ini", "");
    expect_error(path, sets, "--set: [optimizer] params", "lr", NULL);
}

/* Every registered rule and optimizer can be named, and loads with its own defaults unless it
 * has a required parameter (then the error says which). Keeps the schema in step with the
 * registry. */
/* mode = async needs the rule fedbuff, fedbuff needs async, and async has no evaluation rounds;
 * each refusal names the keys involved. */
static void test_async_mode_and_its_rule_go_together(void **state) {
    (void)state;
    char path[512];
    write_config(path, sizeof path, "async.ini", "[round]\nmode = async\nbuffer_size = 4\n"
                                                 "concurrency = 7\nmax_staleness = 3\n"
                                                 "[aggregator]\nrule = fedbuff\n");
    dcfg *c = load_ok(path, NULL);
    assert_int_equal(c->round.mode, DCFG_ROUND_ASYNC);
    assert_int_equal(c->round.buffer_size, 4);
    assert_int_equal(c->round.concurrency, 7);
    assert_int_equal(c->round.max_staleness, 3);
    dcfg_free(c);
    c = NULL;
    fc_error err = {0};
    const char *fedavg[] = {"aggregator.rule=fedavg", NULL};
    assert_int_equal(load(path, fedavg, &c, &err), FC_ERR_CONFIG);
    assert_non_null(strstr(fc_error_text(&err), "[aggregator] rule"));
    assert_non_null(strstr(fc_error_text(&err), "mode = async"));
    const char *sync[] = {"round.mode=sync", NULL};
    assert_int_equal(load(path, sync, &c, &err), FC_ERR_CONFIG);
    assert_non_null(strstr(fc_error_text(&err), "fedbuff is the buffer"));
    const char *eval[] = {"round.eval_every=2", NULL};
    assert_int_equal(load(path, eval, &c, &err), FC_ERR_CONFIG);
    assert_non_null(strstr(fc_error_text(&err), "eval_every"));
    const char *bad[] = {"round.mode=fedbuff", NULL};
    assert_int_equal(load(path, bad, &c, &err), FC_ERR_CONFIG);
    assert_non_null(strstr(fc_error_text(&err), "mode"));
}

static void test_every_registered_rule_and_optimizer_is_accepted(void **state) {
    (void)state;
    char path[512], set[128];
    write_config(path, sizeof path, "reg.ini", "");
    const char *sets[] = {set, NULL, NULL};
    for (const agg_rule *const *r = agg_rules(); *r; r++) {
        snprintf(set, sizeof set, "aggregator.rule=%s", (*r)->name);
        /* the asynchronous buffer runs only in async mode */
        sets[1] = strcmp((*r)->name, "fedbuff") == 0 ? "round.mode=async" : NULL;
        dcfg *c = NULL;
        fc_error err = {0};
        fc_status st = load(path, sets, &c, &err);
        if (st == FC_OK) {
            assert_ptr_equal(c->aggregator.rule, *r);
            dcfg_free(c);
        } else {
            assert_non_null(strstr(fc_error_text(&err), "missing required parameter"));
        }
    }
    sets[1] = NULL;
    size_t n = 0, found = 0;
    const fc_config_key *schema = dcfg_schema(&n);
    const fc_config_key *name_key = NULL;
    for (size_t i = 0; i < n; i++)
        if (strcmp(schema[i].section, "optimizer") == 0 && strcmp(schema[i].key, "name") == 0)
            name_key = &schema[i];
    assert_non_null(name_key);
    for (const agg_opt *const *o = agg_opts(); *o; o++) {
        found = 0;
        for (size_t i = 0; name_key->choices[i]; i++)
            found += strcmp(name_key->choices[i], (*o)->name) == 0;
        assert_int_equal(found, 1);
        snprintf(set, sizeof set, "optimizer.name=%s", (*o)->name);
        dcfg *c = load_ok(path, sets);
        assert_ptr_equal(c->optimizer.opt, *o);
        dcfg_free(c);
    }
    size_t nchoices = 0, nopts = 0;
    while (name_key->choices[nchoices])
        nchoices++;
    while (agg_opts()[nopts])
        nopts++;
    assert_int_equal(nchoices, nopts);
}

/* Runs dcfg_main with argv, stdout/stderr to files; returns the exit status. */
static int run_main(const char *const *argv_in, char **out_text, char **err_text) {
    char *argv[32];
    int argc = 0;
    argv[argc++] = (char *)"fedcoord";
    for (; argv_in[argc - 1]; argc++)
        argv[argc] = (char *)argv_in[argc - 1];
    argv[argc] = NULL;
    char op[512], ep[512];
    FILE *out = fopen(fc_test_path(op, sizeof op, "main.out"), "w");
    FILE *err = fopen(fc_test_path(ep, sizeof ep, "main.err"), "w");
    assert_non_null(out);
    assert_non_null(err);
    dcfg *c = NULL;
    int rc = dcfg_main(argc, argv, out, err, &c);
    fclose(out);
    fclose(err);
    if (rc == DCFG_CONTINUE)
        assert_non_null(c);
    else
        assert_null(c);
    dcfg_free(c);
    *out_text = fc_test_slurp(op, NULL);
    *err_text = fc_test_slurp(ep, NULL);
    assert_non_null(*out_text);
    assert_non_null(*err_text);
    return rc;
}

/* The dump without its "; where" comments. */
static void strip_comments(char *text) {
    char *w = text;
    for (char *line = text; *line;) {
        char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        if (line[0] != ';') {
            size_t keep = len;
            for (size_t i = 0; i + 2 < len; i++)
                if (line[i] == ' ' && line[i + 1] == ';' && line[i + 2] == ' ')
                    keep = i;
            memmove(w, line, keep);
            w += keep;
            *w++ = '\n';
        }
        line += len + (nl ? 1 : 0);
    }
    *w = '\0';
}

static void test_check_config_prints_a_config_that_loads_back(void **state) {
    (void)state;
    char path[512], dump_path[512];
    write_config(path, sizeof path, "cc.ini",
                 "[aggregator]\nrule = centered_clip\nparams = \"tau=2.5, iters=4\"\n"
                 "[limits]\nidle_timeout = 1h30m\n");
    const char *argv1[] = {"--check-config", "--config", path, "--set", "round.seed=42", NULL};
    char *out = NULL, *err = NULL;
    assert_int_equal(run_main(argv1, &out, &err), 0);
    assert_string_equal(err, "");
    assert_non_null(strstr(out, "[round]"));
    assert_non_null(strstr(out, "seed = 42 ; --set"));
    write_file(fc_test_path(dump_path, sizeof dump_path, "dump.ini"), out);

    const char *argv2[] = {"--config", dump_path, "--check-config", NULL};
    char *out2 = NULL, *err2 = NULL;
    assert_int_equal(run_main(argv2, &out2, &err2), 0);
    strip_comments(out);
    strip_comments(out2);
    assert_string_equal(out, out2);
    free(out);
    free(err);
    free(out2);
    free(err2);

    /* Loaded for a run, the dump gives the same typed values. */
    dcfg *c = load_ok(dump_path, NULL);
    assert_int_equal(c->round.seed, 42);
    assert_int_equal(c->limits.net.idle_timeout_ms, 90 * 60 * 1000);
    assert_string_equal(c->aggregator.rule->name, "centered_clip");
    assert_int_equal(c->aggregator.params.count, 2);
    dcfg_free(c);
}

static void test_main_exit_codes_and_messages(void **state) {
    (void)state;
    char path[512];
    char *out, *err;
    const char *help[] = {"--help", NULL};
    assert_int_equal(run_main(help, &out, &err), 0);
    assert_non_null(strstr(out, "--check-config"));
    free(out);
    free(err);
    const char *version[] = {"--version", NULL};
    assert_int_equal(run_main(version, &out, &err), 0);
    assert_true(strncmp(out, "fedcoord ", 9) == 0);
    free(out);
    free(err);

    const char *none[] = {NULL};
    assert_int_equal(run_main(none, &out, &err), 2);
    assert_non_null(strstr(err, "fedcoord: --config FILE is required"));
    free(out);
    free(err);
    const char *unknown[] = {"--conf", "x", NULL};
    assert_int_equal(run_main(unknown, &out, &err), 2);
    assert_non_null(strstr(err, "unknown argument '--conf'"));
    free(out);
    free(err);

    write_config(path, sizeof path, "m.ini", "[round]\nmin_updates = 3\n");
    const char *bad[] = {"--config", path, "--check-config", NULL};
    assert_int_equal(run_main(bad, &out, &err), 2);
    assert_string_equal(out, "");
    assert_non_null(strstr(err, "fedcoord: "));
    assert_non_null(strstr(err, "min_updates"));
    /* exactly one line */
    assert_non_null(strchr(err, '\n'));
    assert_string_equal(strchr(err, '\n'), "\n");
    free(out);
    free(err);
    const char *noval[] = {"--config", path, "--set", NULL};
    assert_int_equal(run_main(noval, &out, &err), 2);
    assert_non_null(strstr(err, "--set needs a value"));
    free(out);
    free(err);

    /* Without --check-config a good configuration continues into the daemon. */
    write_config(path, sizeof path, "run.ini", "");
    char arg[600];
    snprintf(arg, sizeof arg, "--config=%s", path);
    const char *good[] = {arg, "--set=round.seed=3", NULL};
    assert_int_equal(run_main(good, &out, &err), DCFG_CONTINUE);
    assert_string_equal(out, "");
    assert_string_equal(err, "");
    free(out);
    free(err);
}

/* Out of memory at every allocation of a load: FC_ERR_NOMEM (or success once enough
 * allocations succeed), never a crash or a leak (the ASan run checks leaks). */
static void test_out_of_memory_at_each_allocation_fails_cleanly(void **state) {
    (void)state;
    char path[512];
    write_config(path, sizeof path, "oom.ini",
                 "[aggregator]\nrule = centered_clip\nparams = tau=2,iters=2\n"
                 "[optimizer]\nname = adam\nparams = lr=0.5\n");
    const char *sets[] = {"round.seed=5", NULL};
    int succeeded = 0;
    for (long n = 0; n < 10000 && !succeeded; n++) {
        dcfg *c = NULL;
        fc_error err = {0};
        fc_alloc_fail_after(n);
        fc_status st = load(path, sets, &c, &err);
        fc_alloc_fail_after(-1);
        if (st == FC_OK) {
            assert_int_equal(c->round.seed, 5);
            assert_int_equal(c->aggregator.params.count, 2);
            dcfg_free(c);
            succeeded = 1;
        } else {
            if (st != FC_ERR_NOMEM)
                fail_msg("allocation %ld: %s (%s)", n, fc_status_name(st), fc_error_text(&err));
            assert_null(c);
        }
    }
    assert_true(succeeded);
}

static void test_client_names(void **state) {
    (void)state;
    assert_true(dcfg_valid_client_name("a"));
    assert_true(dcfg_valid_client_name("node-7.site_b"));
    char name[DCFG_NAME_MAX + 2];
    memset(name, 'x', sizeof name);
    name[DCFG_NAME_MAX] = '\0';
    assert_true(dcfg_valid_client_name(name));
    name[DCFG_NAME_MAX] = 'x';
    name[DCFG_NAME_MAX + 1] = '\0';
    assert_false(dcfg_valid_client_name(name));
    assert_false(dcfg_valid_client_name(""));
    assert_false(dcfg_valid_client_name(NULL));
    assert_false(dcfg_valid_client_name("a b"));
    assert_false(dcfg_valid_client_name("a/b"));
    assert_false(dcfg_valid_client_name("a\nb"));
}

#define TABLE_BEGIN "<!-- BEGIN GENERATED TABLE: tests/unit/test_daemon_config.c -->\n"
#define TABLE_END "<!-- END GENERATED TABLE -->\n"

/* docs/configuration.md holds exactly fc_config_schema_markdown(dcfg_schema) between the
 * markers. On a mismatch the expected table is written to BUILD/configuration-table.md. */
static void test_configuration_doc_matches_the_schema(void **state) {
    (void)state;
    size_t n = 0;
    const fc_config_key *schema = dcfg_schema(&n);
    fc_buf table = FC_BUF_INIT;
    assert_int_equal(fc_config_schema_markdown(schema, n, &table), FC_OK);
    assert_int_equal(fc_buf_append(&table, "", 1), FC_OK);
    const char *expected = (const char *)table.data;

    char *doc = fc_test_slurp("docs/configuration.md", NULL);
    if (!doc)
        fail_msg("cannot read docs/configuration.md (run the tests from the repository root)");
    char *b = strstr(doc, TABLE_BEGIN), *e = b ? strstr(b, TABLE_END) : NULL;
    if (!b || !e)
        fail_msg("docs/configuration.md lacks the markers %s / %s", TABLE_BEGIN, TABLE_END);
    b += strlen(TABLE_BEGIN);
    size_t len = (size_t)(e - b);
    if (len != strlen(expected) || memcmp(b, expected, len) != 0) {
        char out[600];
        snprintf(out, sizeof out, "%s/configuration-table.md", fc_test_build_dir());
        FILE *f = fopen(out, "w");
        if (f) {
            fputs(expected, f);
            fclose(f);
        }
        fail_msg("docs/configuration.md is out of date with the schema in "
                 "server/daemon_config.c; the expected table is in %s: replace the lines "
                 "between the markers with it",
                 out);
    }
    free(doc);
    fc_buf_free(&table);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_load_with_only_tls_files_and_data_dir),
        cmocka_unit_test(test_every_section_is_read_into_the_struct),
        cmocka_unit_test(test_set_overrides_the_file_whatever_the_order),
        cmocka_unit_test(test_errors_name_the_file_line_or_set),
        cmocka_unit_test(test_cross_key_constraints_name_both_keys),
        cmocka_unit_test(test_rule_and_optimizer_params_are_checked_at_load),
        cmocka_unit_test(test_async_mode_and_its_rule_go_together),
        cmocka_unit_test(test_every_registered_rule_and_optimizer_is_accepted),
        cmocka_unit_test(test_check_config_prints_a_config_that_loads_back),
        cmocka_unit_test(test_main_exit_codes_and_messages),
        cmocka_unit_test(test_out_of_memory_at_each_allocation_fails_cleanly),
        cmocka_unit_test(test_client_names),
        cmocka_unit_test(test_configuration_doc_matches_the_schema),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
