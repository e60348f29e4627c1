/* fuzz_config.c: libFuzzer target for the INI configuration loader.
 *
 * The input is an INI document, loaded against a schema with every value type. The text after
 * "#set " on the document's last such line (a comment to the INI parser) is applied as a
 * `--set` override. Beyond "no crash, no leak", it checks that an accepted configuration dumps
 * to text that loads back to the same values, and that the getters agree with the dump. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"

static const char *const rules[] = {"fedavg", "fedprox", "krum", "median", "trimmed_mean", NULL};

static const fc_config_key schema[] = {
    {.section = "server", .key = "listen", .type = FC_CONFIG_STRING, .def = "0.0.0.0:8443"},
    {.section = "server", .key = "name", .type = FC_CONFIG_STRING},
    {.section = "tls", .key = "cert", .type = FC_CONFIG_PATH, .flags = FC_CONFIG_REQUIRED},
    {.section = "tls", .key = "ca", .type = FC_CONFIG_PATH, .def = "/etc/ssl/ca.pem"},
    {.section = "tls", .key = "mutual", .type = FC_CONFIG_BOOL, .def = "off"},
    {.section = "round", .key = "min_clients", .type = FC_CONFIG_INT, .def = "2", .min = "1",
     .max = "100000"},
    {.section = "round", .key = "seed", .type = FC_CONFIG_INT, .def = "0"},
    {.section = "round", .key = "round_timeout", .type = FC_CONFIG_DURATION, .def = "5m",
     .min = "1s", .max = "7d"},
    {.section = "round", .key = "mu", .type = FC_CONFIG_DOUBLE, .def = "0.01", .min = "0",
     .max = "10"},
    {.section = "round", .key = "over_select", .type = FC_CONFIG_DOUBLE, .def = "1.3"},
    {.section = "aggregator", .key = "rule", .type = FC_CONFIG_ENUM, .def = "fedavg",
     .choices = rules},
    {.section = "limits", .key = "max_frame", .type = FC_CONFIG_SIZE, .def = "4MiB",
     .min = "1KiB", .max = "1GiB"},
    {.section = "limits", .key = "staging_memory", .type = FC_CONFIG_SIZE, .def = "1G"},
    {.section = "limits", .key = "idle_timeout", .type = FC_CONFIG_DURATION, .def = "0"},
};
#define NKEYS (sizeof schema / sizeof schema[0])

/* Every getter agrees between a and b. */
static void same_values(const fc_config *a, const fc_config *b) {
    for (size_t i = 0; i < NKEYS; i++) {
        const char *s = schema[i].section, *k = schema[i].key;
        int same = 1;
        switch (schema[i].type) {
        case FC_CONFIG_STRING:
            same = !strcmp(fc_config_get_string(a, s, k), fc_config_get_string(b, s, k));
            break;
        case FC_CONFIG_PATH:
            same = !strcmp(fc_config_get_path(a, s, k), fc_config_get_path(b, s, k));
            break;
        case FC_CONFIG_BOOL:
            same = fc_config_get_bool(a, s, k) == fc_config_get_bool(b, s, k);
            break;
        case FC_CONFIG_INT:
            same = fc_config_get_int(a, s, k) == fc_config_get_int(b, s, k);
            break;
        case FC_CONFIG_SIZE:
            same = fc_config_get_size(a, s, k) == fc_config_get_size(b, s, k);
            break;
        case FC_CONFIG_DOUBLE:
            same = fc_config_get_double(a, s, k) == fc_config_get_double(b, s, k);
            break;
        case FC_CONFIG_DURATION:
            same = fc_config_get_duration_ms(a, s, k) == fc_config_get_duration_ms(b, s, k);
            break;
        case FC_CONFIG_ENUM:
            same = fc_config_get_enum_index(a, s, k) == fc_config_get_enum_index(b, s, k);
            break;
        }
        if (!same) {
            fprintf(stderr, "dump round trip changed [%s] %s\n", s, k);
            abort();
        }
    }
}

static void round_trip(const fc_config *cfg) {
    fc_buf out = FC_BUF_INIT;
    if (fc_config_dump(cfg, &out) != FC_OK)
        abort();
    fc_config *again = NULL;
    fc_error err = {0};
    if (fc_config_new(schema, NKEYS, &again, &err) != FC_OK)
        abort();
    if (fc_config_load_string(again, "dump", (const char *)out.data, out.len, &err) != FC_OK) {
        fprintf(stderr, "dump does not load back: %s\n%.*s", err.msg, (int)out.len,
                (const char *)out.data);
        abort();
    }
    same_values(cfg, again);
    fc_config_free(again);
    fc_buf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *text = (const char *)data;
    fc_config *cfg = NULL;
    fc_error err = {0};
    if (fc_config_new(schema, NKEYS, &cfg, &err) != FC_OK)
        abort();

    /* The override: the text after the last "#set " up to the end of its line. */
    char assignment[512] = "";
    for (size_t i = 0; i + 5 <= size; i++) {
        if ((i == 0 || text[i - 1] == '\n') && memcmp(text + i, "#set ", 5) == 0) {
            size_t j = i + 5, n = 0;
            while (j < size && text[j] != '\n' && text[j] != '\0' && n + 1 < sizeof assignment)
                assignment[n++] = text[j++];
            assignment[n] = '\0';
        }
    }

    fc_status st = fc_config_load_string(cfg, "fuzz.ini", text, size, &err);
    if (st != FC_OK && st != FC_ERR_CONFIG)
        abort();
    if (st == FC_ERR_CONFIG && strncmp(err.msg, "fuzz.ini", 8) != 0)
        abort(); /* every file error names the file */
    if (st == FC_OK)
        round_trip(cfg);
    if (assignment[0]) {
        st = fc_config_set(cfg, assignment, "--set", &err);
        if (st != FC_OK && st != FC_ERR_CONFIG)
            abort();
        if (st == FC_ERR_CONFIG && strncmp(err.msg, "--set", 5) != 0)
            abort();
        round_trip(cfg);
    }
    (void)fc_config_check_required(cfg, &err);
    fc_config_free(cfg);
    return 0;
}
