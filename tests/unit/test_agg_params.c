/* test_agg_params.c: parameter parsing and its error messages. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "aggregators/agg.h"
#include "aggregators/rules.h"

static const agg_param_spec specs[] = {
    {"f", AGG_PARAM_UINT, "1", 0, 100, NULL, "byzantine count"},
    {"beta", AGG_PARAM_DOUBLE, "0.2", 0, 0.5, NULL, "fraction"},
    {"weighting", AGG_PARAM_ENUM, "examples", 0, 0, "examples|uniform", "weighting"},
    {"nesterov", AGG_PARAM_BOOL, "false", 0, 0, NULL, "nesterov"},
    {"trim", AGG_PARAM_UINT, "", 0, 0, NULL, "count"},
    {"max_norm", AGG_PARAM_DOUBLE, NULL, 0, 1e300, NULL, "bound"},
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

static fc_status parse2(const char *k1, const char *v1, const char *k2, const char *v2,
                        agg_value *v, fc_error *err) {
    agg_kv items[2] = {{k1, v1}, {k2, v2}};
    agg_params p = {items, k2 ? 2 : 1};
    return agg_params_parse("rule test", specs, &p, v, err);
}

static void test_defaults_fill_unset_keys(void **state) {
    (void)state;
    agg_value v[6];
    fc_error err = {0};
    assert_int_equal(parse2("max_norm", "2.5", NULL, NULL, v, &err), FC_OK);
    assert_true(v[0].set);
    assert_int_equal(v[0].u, 1);
    assert_true(v[1].d == 0.2);
    assert_int_equal(v[2].u, 0);
    assert_int_equal(v[3].u, 0);
    assert_false(v[4].set); /* "" = unset by default */
    assert_true(v[5].d == 2.5);
}

static void test_values_of_every_type_parse(void **state) {
    (void)state;
    agg_value v[6];
    agg_kv items[5] = {{"f", "7"},
                       {"beta", "0.29"},
                       {"weighting", "uniform"},
                       {"nesterov", "true"},
                       {"max_norm", "1e3"}};
    agg_params p = {items, 5};
    fc_error err = {0};
    assert_int_equal(agg_params_parse("rule test", specs, &p, v, &err), FC_OK);
    assert_int_equal(v[0].u, 7);
    assert_true(v[1].d == 0.29);
    assert_int_equal(v[2].u, 1);
    assert_int_equal(v[3].u, 1);
    assert_true(v[5].d == 1000.0);
}

static void test_unknown_key_lists_accepted_keys(void **state) {
    (void)state;
    agg_value v[6];
    fc_error err = {0};
    assert_int_equal(parse2("max_norm", "1", "ff", "2", v, &err), FC_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "rule test: unknown parameter 'ff'"));
    assert_non_null(strstr(err.msg, "f (integer, default 1)"));
    assert_non_null(strstr(err.msg, "weighting (examples|uniform, default examples)"));
    assert_non_null(strstr(err.msg, "max_norm (number, required)"));
    assert_non_null(strstr(err.msg, "trim (integer, unset by default)"));
}

static void test_bad_values_are_config_errors_naming_the_key(void **state) {
    (void)state;
    agg_value v[6];
    fc_error err = {0};
    assert_int_equal(parse2("max_norm", "1", "f", "-1", v, &err), FC_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "bad value for 'f'"));
    assert_int_equal(parse2("max_norm", "1", "f", "3x", v, &err), FC_ERR_CONFIG);
    assert_int_equal(parse2("max_norm", "1", "f", "", v, &err), FC_ERR_CONFIG);
    assert_int_equal(parse2("max_norm", "nan", NULL, NULL, v, &err), FC_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "not a finite number"));
    assert_int_equal(parse2("max_norm", "inf", NULL, NULL, v, &err), FC_ERR_CONFIG);
    assert_int_equal(parse2("max_norm", "1", "weighting", "median", v, &err), FC_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "not one of examples|uniform"));
    assert_int_equal(parse2("max_norm", "1", "weighting", "exam", v, &err), FC_ERR_CONFIG);
    assert_int_equal(parse2("max_norm", "1", "nesterov", "maybe", v, &err), FC_ERR_CONFIG);
    assert_int_equal(parse2("max_norm", "1", "max_norm", "2", v, &err), FC_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "given twice"));
}

static void test_out_of_range_values_are_rejected(void **state) {
    (void)state;
    agg_value v[6];
    fc_error err = {0};
    assert_int_equal(parse2("max_norm", "1", "beta", "0.51", v, &err), FC_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "out of range [0, 0.5]"));
    assert_int_equal(parse2("max_norm", "1", "f", "101", v, &err), FC_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "out of range [0, 100]"));
    assert_int_equal(parse2("max_norm", "1", "beta", "0.5", v, &err), FC_OK);
}

static void test_missing_required_key_is_named(void **state) {
    (void)state;
    agg_value v[6];
    fc_error err = {0};
    assert_int_equal(parse2("f", "2", NULL, NULL, v, &err), FC_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "missing required parameter 'max_norm'"));
}

static void test_rule_without_parameters_says_none_accepted(void **state) {
    (void)state;
    static const agg_param_spec none[] = {{NULL, 0, NULL, 0, 0, NULL, NULL}};
    agg_kv items[1] = {{"x", "1"}};
    agg_params p = {items, 1};
    fc_error err = {0};
    assert_int_equal(agg_params_parse("rule median", none, &p, NULL, &err), FC_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "accepted: none"));
}

static void test_registered_rules_reject_unknown_keys_at_create(void **state) {
    (void)state;
    const agg_rule *const *rules = agg_rules();
    agg_kv items[1] = {{"no_such_key", "1"}};
    agg_params p = {items, 1};
    agg_context ctx = {.dim = 4, .num_registered = 10};
    for (size_t i = 0; rules[i]; i++) {
        agg_state *s = NULL;
        fc_error err = {0};
        assert_int_equal(rules[i]->create(&p, &ctx, &s, &err), FC_ERR_CONFIG);
        assert_null(s);
        assert_non_null(strstr(err.msg, "accepted:"));
    }
    const agg_opt *const *opts = agg_opts();
    for (size_t i = 0; opts[i]; i++) {
        agg_opt_state *s = NULL;
        fc_error err = {0};
        assert_int_equal(opts[i]->create(&p, 4, &s, &err), FC_ERR_CONFIG);
        assert_non_null(strstr(err.msg, "accepted:"));
    }
}

static void test_registry_finds_every_rule_and_optimizer(void **state) {
    (void)state;
    assert_ptr_equal(agg_rule_find("fedavg"), &agg_fedavg);
    assert_ptr_equal(agg_rule_find("fedau"), &agg_fedau);
    assert_ptr_equal(agg_rule_find("centered_clip"), &agg_centered_clip);
    assert_ptr_equal(agg_rule_find("norm_bound"), &agg_norm_bound);
    assert_null(agg_rule_find("fedsgd"));
    assert_null(agg_rule_find(NULL));
    assert_ptr_equal(agg_opt_find("sgd"), &agg_opt_sgd);
    assert_ptr_equal(agg_opt_find("adam"), &agg_opt_adam);
    assert_ptr_equal(agg_opt_find("yogi"), &agg_opt_yogi);
    assert_ptr_equal(agg_opt_find("adagrad"), &agg_opt_adagrad);
    assert_null(agg_opt_find("rmsprop"));
    assert_non_null(strstr(agg_rule_names(), "fedavg, fedau"));
    assert_string_equal(agg_opt_names(), "sgd, adam, yogi, adagrad");
    for (const agg_rule *const *r = agg_rules(); *r; r++)
        assert_int_equal((*r)->version, AGG_RULE_V1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_fill_unset_keys),
        cmocka_unit_test(test_values_of_every_type_parse),
        cmocka_unit_test(test_unknown_key_lists_accepted_keys),
        cmocka_unit_test(test_bad_values_are_config_errors_naming_the_key),
        cmocka_unit_test(test_out_of_range_values_are_rejected),
        cmocka_unit_test(test_missing_required_key_is_named),
        cmocka_unit_test(test_rule_without_parameters_says_none_accepted),
        cmocka_unit_test(test_registered_rules_reject_unknown_keys_at_create),
        cmocka_unit_test(test_registry_finds_every_rule_and_optimizer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
