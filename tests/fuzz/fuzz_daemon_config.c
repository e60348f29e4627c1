/* fuzz_daemon_config.c: libFuzzer target for the daemon's configuration (server/daemon_config.c):
 * the real schema, the cross-key checks and the [aggregator]/[optimizer] params parser.
 *
 * The input is appended to a fixed prefix that sets the required keys (data_dir /tmp, the TLS
 * files /proc/self/exe, readable on any Linux), so that inputs reach the later checks. Beyond
 * "no crash, no leak", an accepted configuration must dump to text that loads back and dumps
 * to the same values (comments aside), with the same number of rule and optimizer params. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "server/daemon_config.h"

static const char prefix[] =
    "[server]\ndata_dir = /tmp\n[tls]\ncert = /proc/self/exe\nkey = /proc/self/exe\n";

/* The dump without its "; where" comments, as a new heap string. */
static char *strip(const fc_buf *b) {
    char *out = malloc(b->len + 1);
    if (!out)
        abort();
    size_t w = 0, i = 0;
    while (i < b->len) {
        size_t e = i;
        while (e < b->len && b->data[e] != '\n')
            e++;
        if (b->data[i] != ';') {
            size_t keep = e;
            for (size_t k = i; k + 2 < e; k++)
                if (b->data[k] == ' ' && b->data[k + 1] == ';' && b->data[k + 2] == ' ')
                    keep = k;
            memcpy(out + w, b->data + i, keep - i);
            w += keep - i;
            out[w++] = '\n';
        }
        i = e + 1;
    }
    out[w] = '\0';
    return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > 64 * 1024)
        return 0;
    size_t len = sizeof prefix - 1 + size;
    char *text = malloc(len + 1);
    if (!text)
        abort();
    memcpy(text, prefix, sizeof prefix - 1);
    memcpy(text + sizeof prefix - 1, data, size);
    text[len] = '\0';

    dcfg *c = NULL;
    fc_error err = {0};
    if (dcfg_load_text("fuzz.ini", text, len, NULL, 0, &c, &err) == FC_OK) {
        fc_buf d1 = FC_BUF_INIT, d2 = FC_BUF_INIT;
        if (dcfg_dump(c, &d1) != FC_OK)
            abort();
        dcfg *c2 = NULL;
        fc_error err2 = {0};
        if (dcfg_load_text("dump.ini", (const char *)d1.data, d1.len, NULL, 0, &c2, &err2) !=
            FC_OK) {
            fprintf(stderr, "dump does not load back: %s\n", fc_error_text(&err2));
            abort();
        }
        if (dcfg_dump(c2, &d2) != FC_OK)
            abort();
        char *s1 = strip(&d1), *s2 = strip(&d2);
        if (strcmp(s1, s2) != 0 || c->aggregator.params.count != c2->aggregator.params.count ||
            c->optimizer.params.count != c2->optimizer.params.count ||
            c->aggregator.rule != c2->aggregator.rule)
            abort();
        free(s1);
        free(s2);
        fc_buf_free(&d1);
        fc_buf_free(&d2);
        dcfg_free(c2);
        dcfg_free(c);
    } else if (c != NULL || fc_error_text(&err)[0] == '\0') {
        abort(); /* a failure leaves no config and always says why */
    }
    free(text);
    return 0;
}
