/* registry.c: the list of every rule and server optimizer, in documentation order. It owns the
 * lookup by name; it never creates instances. Adding a rule: one line in rules[].
 */
#include "aggregators/agg.h"

#include <stdio.h>
#include <string.h>

#include "aggregators/rules.h"

static const agg_rule *const rules[] = {
    &agg_fedavg,
    &agg_fedau,
    &agg_median,
    &agg_trimmed_mean,
    &agg_krum,
    &agg_multikrum,
    &agg_bulyan,
    &agg_geomed,
    &agg_centered_clip,
    &agg_norm_bound,
    &agg_ida,
    &agg_fedbuff,
    NULL,
};

static const agg_opt *const opts[] = {
    &agg_opt_sgd, &agg_opt_adam, &agg_opt_yogi, &agg_opt_adagrad, NULL,
};

const agg_rule *agg_rule_find(const char *name) {
    for (size_t i = 0; name && rules[i]; i++)
        if (strcmp(rules[i]->name, name) == 0)
            return rules[i];
    return NULL;
}

const agg_opt *agg_opt_find(const char *name) {
    for (size_t i = 0; name && opts[i]; i++)
        if (strcmp(opts[i]->name, name) == 0)
            return opts[i];
    return NULL;
}

const agg_rule *const *agg_rules(void) { return rules; }

const agg_opt *const *agg_opts(void) { return opts; }

/* The lists are constant, so the joined names are built once into static buffers sized for
 * far more names than exist; a name that would not fit is left out rather than cut. */
static void join(char *out, size_t size, const char *const *names, size_t n) {
    size_t len = 0;
    out[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        int w = snprintf(out + len, size - len, "%s%s", i ? ", " : "", names[i]);
        if (w < 0 || (size_t)w >= size - len) {
            out[len] = '\0';
            return;
        }
        len += (size_t)w;
    }
}

const char *agg_rule_names(void) {
    static char text[512];
    const char *names[sizeof rules / sizeof rules[0]];
    size_t n = 0;
    for (; rules[n]; n++)
        names[n] = rules[n]->name;
    join(text, sizeof text, names, n);
    return text;
}

const char *agg_opt_names(void) {
    static char text[256];
    const char *names[sizeof opts / sizeof opts[0]];
    size_t n = 0;
    for (; opts[n]; n++)
        names[n] = opts[n]->name;
    join(text, sizeof text, names, n);
    return text;
}
