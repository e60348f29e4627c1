/* testutil.c: see testutil.h. */
#include "tests/lib/testutil.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

const char *fc_test_tmpdir(void) {
    static char dir[256];
    if (dir[0])
        return dir;
    const char *env = getenv("FC_TEST_TMPDIR");
    if (env && *env) {
        snprintf(dir, sizeof dir, "%s", env);
        return dir;
    }
    snprintf(dir, sizeof dir, "/tmp/fc-test.XXXXXX");
    if (!mkdtemp(dir))
        snprintf(dir, sizeof dir, "/tmp");
    return dir;
}

char *fc_test_path(char *buf, size_t size, const char *name) {
    snprintf(buf, size, "%s/%s", fc_test_tmpdir(), name);
    return buf;
}

const char *fc_test_build_dir(void) {
    const char *env = getenv("FC_BUILD_DIR");
    return env && *env ? env : "build";
}

static int redirect(const char *path, int fd) {
    int f = open(path ? path : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (f < 0)
        return -1;
    int rc = dup2(f, fd);
    close(f);
    return rc < 0 ? -1 : 0;
}

int fc_test_run(const char *const argv[], const char *stdout_path, const char *stderr_path,
                int timeout_s) {
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        if (redirect(stdout_path, 1) != 0 || redirect(stderr_path, 2) != 0)
            _exit(126);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        int status;
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid) {
            if (WIFEXITED(status))
                return WEXITSTATUS(status);
            return 128 + WTERMSIG(status);
        }
        if (r < 0)
            return -1;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - start.tv_sec >= timeout_s) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return 128 + SIGKILL;
        }
        struct timespec pause = {0, 2 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
}

char *fc_test_slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0)
            break;
        if (cap - n - 1 == 0) {
            char *p = realloc(buf, cap * 2);
            if (!p) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = p;
            cap *= 2;
        }
    }
    fclose(f);
    if (!buf)
        return NULL;
    buf[n] = '\0';
    if (len)
        *len = n;
    return buf;
}
