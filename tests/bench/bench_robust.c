/* bench_robust.c: time of the retaining rules (median, trimmed_mean, krum, bulyan, geomed) at
 * n = 100 through the round driver, on f32 updates that are data_stable pointers into a
 * memory-mapped raw file, and the same computations in numpy (tests/bench/robust_numpy.py, run
 * on the same file) when /usr/bin/python3 has numpy. Prints seconds, the numpy/C ratio and the
 * largest difference between the two results. Then the peak RSS of median at n = 50 over a
 * larger memory-mapped input, measured in a child process, as a ratio to the input size.
 *
 * Environment: BENCH_QUICK=1 (d = 200k, RSS d = 2M), BENCH_D (d for the timing part, default
 * 2M), BENCH_RSS_D (default 20M), BENCH_NO_NUMPY=1, BENCH_DIR (folder for the data files,
 * default $TMPDIR or /tmp; the files are removed at the end).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "aggregators/agg.h"
#include "core/alloc.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static size_t env_size(const char *name, size_t dflt) {
    const char *v = getenv(name);
    if (!v || !*v)
        return dflt;
    char *end;
    unsigned long long x = strtoull(v, &end, 10);
    return (*end == '\0' && x > 0) ? (size_t)x : dflt;
}

/* Deterministic data: mostly uniform in [-1, 1), 5% of the updates are outliers (x 50). */
static int write_data(const char *path, size_t n, size_t d) {
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "bench_robust: cannot create %s: %s\n", path, strerror(errno));
        return -1;
    }
    float *row = malloc(d * sizeof *row);
    if (!row) {
        fclose(f);
        return -1;
    }
    uint64_t st = 12345;
    for (size_t i = 0; i < n; i++) {
        float scale = (i % 20 == 7) ? 50.0f : 1.0f;
        for (size_t j = 0; j < d; j++) {
            st = st * 6364136223846793005ull + 1442695040888963407ull;
            row[j] = scale * ((float)(st >> 40) / 8388608.0f - 1.0f);
        }
        if (fwrite(row, sizeof(float), d, f) != d) {
            fprintf(stderr, "bench_robust: writing %s: %s\n", path, strerror(errno));
            free(row);
            fclose(f);
            return -1;
        }
    }
    free(row);
    return fclose(f) == 0 ? 0 : -1;
}

static const float *map_data(const char *path, size_t bytes) {
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return NULL;
    void *m = mmap(NULL, bytes, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    return m == MAP_FAILED ? NULL : m;
}

/* Runs one round of rule over n rows of the mapping; returns seconds or -1. */
static double run_rule(const char *rule, const char *const *kv, const float *data, size_t n,
                       size_t d, double *D) {
    agg_kv items[4];
    size_t nkv = 0;
    char store[4][64];
    for (; kv && kv[nkv]; nkv++) {
        snprintf(store[nkv], sizeof store[nkv], "%s", kv[nkv]);
        char *eq = strchr(store[nkv], '=');
        *eq = '\0';
        items[nkv].key = store[nkv];
        items[nkv].value = eq + 1;
    }
    agg_params p = {items, nkv};
    agg_context ctx = {0};
    ctx.dim = d;
    agg_round *r = NULL;
    agg_report rep;
    agg_report_init(&rep);
    fc_error err = {0};
    double t0 = now();
    fc_status st = agg_round_begin(agg_rule_find(rule), &p, &ctx, NULL, 0, &r, &err);
    for (size_t i = 0; st == FC_OK && i < n; i++) {
        agg_update u = {0};
        u.client_id = i + 1;
        u.dtype = FC_DTYPE_F32;
        u.data = data + i * d;
        u.data_stable = 1;
        u.weight = 1.0;
        st = agg_round_add(r, &u, &err);
    }
    if (st == FC_OK)
        st = agg_round_finish(r, D, &rep, &err);
    double t = now() - t0;
    agg_round_free(r);
    agg_report_free(&rep);
    if (st != FC_OK) {
        fprintf(stderr, "bench_robust: %s: %s\n", rule, fc_error_text(&err));
        return -1;
    }
    return t;
}

/* ---- peak RSS of median over a mapped input, in a child process ---- */

static volatile int sampling = 1;
static volatile float page_sink;
static long peak_anon_kb;

static long status_kb(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return -1;
    char line[256];
    long v = -1;
    size_t kl = strlen(key);
    while (fgets(line, sizeof line, f))
        if (strncmp(line, key, kl) == 0 && line[kl] == ':') {
            v = strtol(line + kl + 1, NULL, 10);
            break;
        }
    fclose(f);
    return v;
}

static void *sampler(void *arg) {
    (void)arg;
    while (sampling) {
        long a = status_kb("RssAnon");
        if (a > peak_anon_kb)
            peak_anon_kb = a;
        usleep(2000);
    }
    return NULL;
}

static int rss_child(const char *path, size_t n, size_t d) {
    size_t bytes = n * d * sizeof(float);
    const float *data = map_data(path, bytes);
    double *D = fc_mallocarray(d, sizeof(double));
    if (!data || !D)
        return 1;
    pthread_t th;
    if (pthread_create(&th, NULL, sampler, NULL) != 0)
        return 1;
    double t = run_rule("median", NULL, data, n, d, D);
    sampling = 0;
    pthread_join(th, NULL);
    long hwm = status_kb("VmHWM");
    double in_kb = (double)bytes / 1024.0;
    printf("rss: median n=%zu d=%zu from a mapped %.2f GB input: %.2f s, peak RSS %.1f MB "
           "(%.3f x input; file-backed pages of the mapping count), peak anonymous %.1f MB "
           "(%.4f x input; includes the %zu MB output D)\n",
           n, d, (double)bytes / 1e9, t, (double)hwm / 1024.0, (double)hwm / in_kb,
           (double)peak_anon_kb / 1024.0, (double)peak_anon_kb / in_kb, d * sizeof(double) >> 20);
    fflush(stdout); /* the child leaves through _exit */
    return t < 0;
}

/* ---- numpy comparison ---- */

typedef struct np_result {
    char rule[32];
    double secs;
} np_result;

static size_t run_numpy(const char *script, const char *data, size_t n, size_t d, np_result *res,
                        size_t cap) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s %s %zu %zu", script, data, n, d);
    FILE *p = popen(cmd, "r");
    if (!p)
        return 0;
    size_t k = 0;
    char line[256];
    while (fgets(line, sizeof line, p)) {
        if (k < cap && sscanf(line, "numpy %31s %lf", res[k].rule, &res[k].secs) == 2)
            k++;
        else
            fputs(line, stdout);
    }
    return pclose(p) == 0 ? k : 0;
}

static double max_diff_vs_file(const char *path, const double *D, size_t d) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    double buf[4096], m = 0;
    size_t j = 0, got;
    while (j < d && (got = fread(buf, sizeof(double), 4096, f)) > 0) {
        for (size_t i = 0; i < got && j < d; i++, j++) {
            double e = buf[i] - D[j];
            if (e < 0)
                e = -e;
            if (e > m)
                m = e;
        }
    }
    fclose(f);
    return j == d ? m : -1;
}

int main(void) {
    int quick = getenv("BENCH_QUICK") && getenv("BENCH_QUICK")[0] == '1';
    size_t n = 100, d = env_size("BENCH_D", quick ? 200000 : 2000000);
    size_t rss_n = 50, rss_d = env_size("BENCH_RSS_D", quick ? 2000000 : 20000000);
    const char *dir = getenv("BENCH_DIR");
    if (!dir || !*dir)
        dir = getenv("TMPDIR");
    if (!dir || !*dir)
        dir = "/tmp";
    char path[512], out[600];
    snprintf(path, sizeof path, "%s/bench_robust.%ld.f32", dir, (long)getpid());

    printf("bench_robust: n=%zu d=%zu f32 (%.2f GB), data_stable rows in a mapped file\n", n, d,
           (double)(n * d * 4) / 1e9);
    if (write_data(path, n, d) != 0)
        return 1;
    const float *data = map_data(path, n * d * sizeof(float));
    double *D = fc_mallocarray(d, sizeof(double));
    if (!data || !D) {
        fprintf(stderr, "bench_robust: cannot map %s or allocate D\n", path);
        unlink(path);
        return 1;
    }
    struct {
        const char *rule;
        const char *kv[3];
        double secs;
    } runs[] = {
        {"median", {NULL}, 0},       {"trimmed_mean", {"beta=0.2", NULL}, 0},
        {"krum", {"f=10", NULL}, 0}, {"bulyan", {"f=10", NULL}, 0},
        {"geomed", {NULL}, 0},
    };
    const size_t nruns = sizeof runs / sizeof runs[0];
    /* Touch the data once so that the first rule does not pay the page faults alone. */
    for (size_t i = 0; i < n * d; i += 1024)
        page_sink += data[i];
    double *results[5] = {0};
    for (size_t r = 0; r < nruns; r++) {
        runs[r].secs = run_rule(runs[r].rule, runs[r].kv, data, n, d, D);
        printf("  %-13s %8.3f s\n", runs[r].rule, runs[r].secs);
        results[r] = fc_mallocarray(d, sizeof(double));
        if (results[r])
            memcpy(results[r], D, d * sizeof(double));
    }

    const char *nonp = getenv("BENCH_NO_NUMPY");
    const char *script = "tests/bench/robust_numpy.py";
    if (access(script, R_OK) != 0) {
        printf("numpy: %s not found (run from the repository root)\n", script);
    } else if (!(nonp && nonp[0] == '1') &&
               system("/usr/bin/python3 -c 'import numpy' 2>/dev/null") == 0) {
        np_result res[8];
        size_t k = run_numpy(script, path, n, d, res, 8);
        if (k == 0)
            printf("numpy: the script failed\n");
        for (size_t i = 0; i < k; i++)
            for (size_t r = 0; r < nruns; r++)
                if (strcmp(res[i].rule, runs[r].rule) == 0) {
                    snprintf(out, sizeof out, "%s.%s.out", path, runs[r].rule);
                    double md = results[r] ? max_diff_vs_file(out, results[r], d) : -1;
                    printf("  %-13s numpy %8.3f s   C is %6.1fx faster   max |C - numpy| %.3g\n",
                           runs[r].rule, res[i].secs, res[i].secs / runs[r].secs, md);
                    unlink(out);
                }
    } else {
        printf("numpy: skipped (BENCH_NO_NUMPY=1) or not available (python3-numpy), no ratios\n");
    }
    for (size_t r = 0; r < nruns; r++)
        fc_free(results[r]);
    munmap((void *)data, n * d * sizeof(float));
    fc_free(D);
    unlink(path);

    /* Peak RSS in a fresh process, so that the numbers above do not count. */
    snprintf(path, sizeof path, "%s/bench_robust_rss.%ld.f32", dir, (long)getpid());
    if (write_data(path, rss_n, rss_d) != 0)
        return 1;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0)
        _exit(rss_child(path, rss_n, rss_d));
    int status = 1;
    if (pid > 0)
        waitpid(pid, &status, 0);
    unlink(path);
    return (pid > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0) ? 0 : 1;
}
