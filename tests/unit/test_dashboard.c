/* test_dashboard.c: GET / serves the dashboard page compiled into the binary.
 *
 * Requests go through http_process_bytes (the same parser and framing as a connection) into
 * api_handle. The expected page is server/dashboard.html read from the source tree, so the test
 * proves the embedded bytes are that file; the expected CSP hash is computed here from the
 * file's script block. The browser-side behaviour is tested by tests/dashboard (Chromium).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "server/api.h"
#include "server/dashboard.h"
#include "server/http.h"
#include "tests/lib/testutil.h"

#define ADMIN "dashboard-admin-token"
#define PAGE_SOURCE "server/dashboard.html"

typedef struct reply {
    int status;
    char *head; /* status line and headers, NUL-terminated */
    uint8_t *body;
    size_t body_len;
} reply;

static void reply_free(reply *r) {
    free(r->head);
    free(r->body);
    memset(r, 0, sizeof *r);
}

/* One request through a fresh api (auth_reads as given); the single response is split. */
static void ask(int auth_reads, const char *raw, reply *r) {
    api *a = NULL;
    fc_error err = {0};
    char db[512];
    api_config ac = {.version = API_CONFIG_V1,
                     .store_path = fc_test_path(db, sizeof db, "absent.db"),
                     .admin_token = ADMIN,
                     .auth_reads = auth_reads,
                     .provider = {.version = API_PROVIDER_V1}};
    assert_int_equal(api_new(&ac, &a, &err), FC_OK);
    http_limits lim;
    http_limits_default(&lim);
    fc_buf out = FC_BUF_INIT;
    assert_int_equal(http_process_bytes(&lim, api_handle, a, (const uint8_t *)raw, strlen(raw),
                                        &out, &err),
                     FC_OK);
    api_free(a);
    const uint8_t *end = NULL;
    for (size_t i = 0; i + 4 <= out.len; i++)
        if (memcmp(out.data + i, "\r\n\r\n", 4) == 0) {
            end = out.data + i;
            break;
        }
    assert_non_null(end);
    size_t head_len = (size_t)(end - out.data);
    r->head = calloc(1, head_len + 1);
    assert_non_null(r->head);
    memcpy(r->head, out.data, head_len);
    r->body_len = out.len - head_len - 4;
    r->body = malloc(r->body_len + 1);
    assert_non_null(r->body);
    memcpy(r->body, end + 4, r->body_len);
    assert_int_equal(sscanf(r->head, "HTTP/1.1 %d ", &r->status), 1);
    fc_buf_free(&out);
}

/* The value of header name in r (a static copy), or NULL. */
static const char *header(const reply *r, const char *name) {
    static char value[1024];
    size_t n = strlen(name);
    for (const char *line = strstr(r->head, "\r\n"); line; line = strstr(line + 2, "\r\n")) {
        const char *h = line + 2;
        if (strncasecmp(h, name, n) == 0 && h[n] == ':') {
            h += n + 1;
            while (*h == ' ')
                h++;
            size_t len = strcspn(h, "\r");
            assert_true(len < sizeof value);
            memcpy(value, h, len);
            value[len] = '\0';
            return value;
        }
    }
    return NULL;
}

static char *page_source(size_t *len) {
    char *text = fc_test_slurp(PAGE_SOURCE, len);
    if (!text) fail_msg("cannot read %s: run the tests from the repository root", PAGE_SOURCE);
    return text;
}

static void test_root_serves_the_page_compiled_from_dashboard_html(void **state) {
    (void)state;
    size_t len = 0;
    char *src = page_source(&len);
    assert_int_equal(fc_dashboard_html_len, len);
    assert_memory_equal(fc_dashboard_html, src, len);
    reply r;
    ask(0, "GET / HTTP/1.1\r\nHost: t\r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(header(&r, "Content-Type"), "text/html; charset=utf-8");
    char cl[32];
    snprintf(cl, sizeof cl, "%zu", len);
    assert_string_equal(header(&r, "Content-Length"), cl);
    assert_int_equal(r.body_len, len);
    assert_memory_equal(r.body, src, len);
    assert_string_equal(header(&r, "X-Frame-Options"), "DENY");
    assert_string_equal(header(&r, "Referrer-Policy"), "no-referrer");
    assert_string_equal(header(&r, "X-Content-Type-Options"), "nosniff");
    assert_string_equal(header(&r, "Cache-Control"), "no-store");
    reply_free(&r);
    /* /index.html is the same page. */
    ask(0, "GET /index.html HTTP/1.1\r\nHost: t\r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, len);
    assert_memory_equal(r.body, src, len);
    reply_free(&r);
    free(src);
}

static void test_csp_admits_only_the_page_script_by_its_hash(void **state) {
    (void)state;
    size_t len = 0;
    char *src = page_source(&len);
    char *open_tag = strstr(src, "<script>");
    assert_non_null(open_tag);
    char *body = open_tag + strlen("<script>");
    char *close_tag = strstr(body, "</script>");
    assert_non_null(close_tag);
    assert_null(strstr(close_tag + 1, "<script")); /* one script block only */
    uint8_t h[32];
    unsigned int hl = 0;
    assert_int_equal(EVP_Digest(body, (size_t)(close_tag - body), h, &hl, EVP_sha256(), NULL), 1);
    unsigned char b64[48];
    assert_int_equal(EVP_EncodeBlock(b64, h, 32), 44);
    char want[512];
    snprintf(want, sizeof want,
             "default-src 'none'; script-src 'sha256-%s'; style-src 'unsafe-inline'; "
             "img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
             "frame-ancestors 'none'",
             (const char *)b64);
    reply r;
    ask(0, "GET / HTTP/1.1\r\nHost: t\r\n\r\n", &r);
    const char *csp = header(&r, "Content-Security-Policy");
    assert_non_null(csp);
    assert_string_equal(csp, want);
    assert_null(strstr(csp, "unsafe-eval"));
    reply_free(&r);
    free(src);
}

static void test_page_needs_no_token_even_when_reads_do(void **state) {
    (void)state;
    reply r;
    ask(1, "GET / HTTP/1.1\r\nHost: t\r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    reply_free(&r);
    ask(1, "GET /v1/status HTTP/1.1\r\nHost: t\r\n\r\n", &r);
    assert_int_equal(r.status, 401);
    reply_free(&r);
}

static void test_other_methods_and_queries_on_the_page_are_refused(void **state) {
    (void)state;
    reply r;
    ask(0, "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n", &r);
    assert_int_equal(r.status, 405);
    assert_string_equal(header(&r, "Allow"), "GET, HEAD");
    reply_free(&r);
    ask(0, "GET /?x=1 HTTP/1.1\r\nHost: t\r\n\r\n", &r);
    assert_int_equal(r.status, 400);
    reply_free(&r);
    ask(0, "GET /index.htm HTTP/1.1\r\nHost: t\r\n\r\n", &r);
    assert_int_equal(r.status, 404);
    reply_free(&r);
}

/* The page is self-contained and inserts data as text: a static check of its source. */
static void test_page_loads_nothing_remote_and_never_parses_data_as_html(void **state) {
    (void)state;
    size_t len = 0;
    char *src = page_source(&len);
    static const char svg_ns[] = "http://www.w3.org/2000/svg'";
    int urls = 0;
    for (const char *p = src; (p = strstr(p, "http")) != NULL; p++) {
        if (strncmp(p, "http://", 7) != 0 && strncmp(p, "https://", 8) != 0) continue;
        urls++;
        if (strncmp(p, svg_ns, strlen(svg_ns)) != 0)
            fail_msg("the page names a remote URL at byte %zu: %.40s", (size_t)(p - src), p);
    }
    assert_int_equal(urls, 1); /* the SVG namespace, which is a name, not a request */
    static const char *const banned[] = {"innerHTML", "outerHTML", "insertAdjacentHTML",
                                         "document.write", "eval(", "new Function", "<iframe",
                                         "@import", "url(", "<script src", "localStorage.set"};
    for (size_t i = 0; i < sizeof banned / sizeof banned[0]; i++)
        if (strstr(src, banned[i])) fail_msg("the page uses %s", banned[i]);
    /* The only <link> is the empty data: icon (it stops the browser asking for /favicon.ico). */
    const char *link = strstr(src, "<link");
    assert_non_null(link);
    assert_int_equal(strncmp(link, "<link rel=\"icon\" href=\"data:,\">", 31), 0);
    assert_null(strstr(link + 1, "<link"));
    free(src);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_root_serves_the_page_compiled_from_dashboard_html),
        cmocka_unit_test(test_csp_admits_only_the_page_script_by_its_hash),
        cmocka_unit_test(test_page_needs_no_token_even_when_reads_do),
        cmocka_unit_test(test_other_methods_and_queries_on_the_page_are_refused),
        cmocka_unit_test(test_page_loads_nothing_remote_and_never_parses_data_as_html),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
