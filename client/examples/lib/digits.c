/* digits.c: reads and validates the digits CSV (see digits.h). It owns the dataset arrays and
 * the gzip child it spawns; it never keeps a row it has not fully validated and never reads past
 * the bytes it was given. */
#include "client/examples/lib/digits.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/alloc.h"

extern char **environ;

#define FIELDS (EX_DIGITS_FEATURES + 1)

void ex_dataset_free(ex_dataset *d) {
    if (!d)
        return;
    fc_free(d->x);
    fc_free(d->y);
    d->x = NULL;
    d->y = NULL;
    d->n = 0;
}

/* Copies at most 24 bytes of a field into buf for a message, escaping nothing but cutting. */
static const char *field_text(const char *p, size_t len, char *buf, size_t size) {
    size_t n = len < size - 4 ? len : size - 4;
    memcpy(buf, p, n);
    strcpy(buf + n, n < len ? "..." : "");
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)buf[i] < 0x20 || (unsigned char)buf[i] > 0x7e)
            buf[i] = '?';
    return buf;
}

/* Parses one line (without its line end) into features and a label. */
static fc_status parse_row(const char *p, size_t len, const char *name, size_t line, float *x,
                           uint8_t *y, fc_error *err) {
    size_t pos = 0;
    for (int f = 0; f < FIELDS; f++) {
        size_t start = pos;
        while (pos < len && p[pos] != ',')
            pos++;
        size_t flen = pos - start;
        const int is_label = f == FIELDS - 1;
        const unsigned max = is_label ? EX_DIGITS_CLASSES - 1 : EX_DIGITS_PIXEL_MAX;
        unsigned value = 0;
        int ok = flen > 0 && flen <= 3;
        for (size_t i = 0; ok && i < flen; i++) {
            char c = p[start + i];
            if (c < '0' || c > '9')
                ok = 0;
            else
                value = value * 10 + (unsigned)(c - '0');
        }
        if (!ok || value > max) {
            char buf[32];
            return fc_error_set(err, FC_ERR_FORMAT,
                                "%s:%zu: field %d (%s) is '%s', expected an integer 0..%u", name,
                                line, f + 1, is_label ? "label" : "pixel",
                                field_text(p + start, flen, buf, sizeof buf), max);
        }
        if (is_label)
            *y = (uint8_t)value;
        else
            x[f] = (float)value / (float)EX_DIGITS_PIXEL_MAX;
        if (!is_label) {
            if (pos >= len)
                return fc_error_set(err, FC_ERR_FORMAT,
                                    "%s:%zu: row has %d fields, expected %d (64 pixels, label)",
                                    name, line, f + 1, FIELDS);
            pos++; /* the comma */
        }
    }
    if (pos != len) {
        size_t extra = 1;
        for (size_t i = pos; i < len; i++)
            extra += p[i] == ',';
        return fc_error_set(err, FC_ERR_FORMAT,
                            "%s:%zu: row has %zu fields, expected %d (64 pixels, label)", name,
                            line, FIELDS + extra - 1, FIELDS);
    }
    return FC_OK;
}

fc_status ex_digits_parse(const char *text, size_t len, const char *name, ex_dataset *out,
                          fc_error *err) {
    if (!name)
        name = "<memory>";
    if (!out || (!text && len > 0))
        return fc_error_set(err, FC_ERR_INVALID, "%s: no text or no output", name);
    if (len > EX_DIGITS_MAX_BYTES)
        return fc_error_set(err, FC_ERR_LIMIT, "%s: %zu bytes, more than the limit of %zu",
                            name, len, EX_DIGITS_MAX_BYTES);
    /* Count lines first so the arrays are allocated once, bounded by the row limit. */
    size_t rows = 0;
    for (size_t i = 0; i < len; i++)
        if (text[i] == '\n' || i + 1 == len)
            rows++;
    if (rows == 0)
        return fc_error_set(err, FC_ERR_FORMAT, "%s: no rows", name);
    if (rows > EX_DIGITS_MAX_ROWS)
        return fc_error_set(err, FC_ERR_LIMIT, "%s: %zu rows, more than the limit of %u", name,
                            rows, EX_DIGITS_MAX_ROWS);
    ex_dataset d = EX_DATASET_INIT;
    d.x = fc_mallocarray(rows * EX_DIGITS_FEATURES, sizeof(float));
    d.y = fc_malloc(rows);
    if (!d.x || !d.y) {
        ex_dataset_free(&d);
        return fc_error_set(err, FC_ERR_NOMEM, "%s: out of memory for %zu rows", name, rows);
    }
    size_t line = 0, pos = 0;
    while (pos < len) {
        line++;
        size_t end = pos;
        while (end < len && text[end] != '\n')
            end++;
        size_t row_len = end - pos;
        if (row_len > 0 && text[pos + row_len - 1] == '\r')
            row_len--;
        if (row_len == 0) {
            ex_dataset_free(&d);
            return fc_error_set(err, FC_ERR_FORMAT, "%s:%zu: empty row", name, line);
        }
        fc_status st = parse_row(text + pos, row_len, name, line,
                                 d.x + d.n * EX_DIGITS_FEATURES, d.y + d.n, err);
        if (st != FC_OK) {
            ex_dataset_free(&d);
            return st;
        }
        d.n++;
        pos = end + 1;
    }
    *out = d;
    return FC_OK;
}

/* Reads everything from fd into a growing buffer, up to EX_DIGITS_MAX_BYTES. */
static fc_status read_all(int fd, const char *path, char **out, size_t *out_len, fc_error *err) {
    size_t cap = 1 << 16, len = 0;
    char *buf = fc_malloc(cap);
    if (!buf)
        return fc_error_set(err, FC_ERR_NOMEM, "%s: out of memory", path);
    for (;;) {
        if (len == cap) {
            if (cap > EX_DIGITS_MAX_BYTES) {
                fc_free(buf);
                return fc_error_set(err, FC_ERR_LIMIT, "%s: more than the limit of %zu bytes",
                                    path, EX_DIGITS_MAX_BYTES);
            }
            char *bigger = fc_realloc(buf, cap * 2);
            if (!bigger) {
                fc_free(buf);
                return fc_error_set(err, FC_ERR_NOMEM, "%s: out of memory", path);
            }
            buf = bigger;
            cap *= 2;
        }
        ssize_t got = read(fd, buf + len, cap - len);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            int e = errno;
            fc_free(buf);
            return fc_error_set(err, FC_ERR_IO, "%s: read: %s", path, strerror(e));
        }
        if (got == 0)
            break;
        len += (size_t)got;
    }
    if (len > EX_DIGITS_MAX_BYTES) {
        fc_free(buf);
        return fc_error_set(err, FC_ERR_LIMIT, "%s: more than the limit of %zu bytes", path,
                            EX_DIGITS_MAX_BYTES);
    }
    *out = buf;
    *out_len = len;
    return FC_OK;
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* Runs gzip -dc -- path with its stdout on a pipe and reads it all. The child is always reaped;
 * if we stop reading early it dies of SIGPIPE when the pipe closes. */
static fc_status gunzip(const char *path, char **out, size_t *out_len, fc_error *err) {
    if (access(path, R_OK) != 0)
        return fc_error_set(err, FC_ERR_IO, "%s: %s", path, strerror(errno));
    int fds[2];
    if (pipe(fds) != 0)
        return fc_error_set(err, FC_ERR_IO, "%s: pipe: %s", path, strerror(errno));
    posix_spawn_file_actions_t fa;
    int rc = posix_spawn_file_actions_init(&fa);
    if (rc == 0 && (rc = posix_spawn_file_actions_adddup2(&fa, fds[1], 1)) == 0 &&
        (rc = posix_spawn_file_actions_addclose(&fa, fds[0])) == 0)
        rc = posix_spawn_file_actions_addclose(&fa, fds[1]);
    pid_t pid = -1;
    if (rc == 0) {
        char *argv[] = {"gzip", "-dc", "--", (char *)path, NULL};
        rc = posix_spawnp(&pid, "gzip", &fa, NULL, argv, environ);
    }
    posix_spawn_file_actions_destroy(&fa);
    close(fds[1]);
    if (rc != 0) {
        close(fds[0]);
        return fc_error_set(err, FC_ERR_IO, "%s: cannot run gzip -dc: %s", path, strerror(rc));
    }
    fc_status st = read_all(fds[0], path, out, out_len, err);
    close(fds[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (st != FC_OK)
        return st;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fc_free(*out);
        *out = NULL;
        if (WIFEXITED(status))
            return fc_error_set(err, FC_ERR_IO, "%s: gzip -dc failed with exit status %d%s", path,
                                WEXITSTATUS(status),
                                WEXITSTATUS(status) == 127 ? " (gzip not found)" : "");
        return fc_error_set(err, FC_ERR_IO, "%s: gzip -dc killed by signal %d", path,
                            WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    }
    return FC_OK;
}

fc_status ex_digits_load(const char *path, ex_dataset *out, fc_error *err) {
    if (!path || !out)
        return fc_error_set(err, FC_ERR_INVALID, "digits: no path or no output");
    char *text = NULL;
    size_t len = 0;
    fc_status st;
    if (ends_with(path, ".gz")) {
        st = gunzip(path, &text, &len, err);
    } else {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return fc_error_set(err, FC_ERR_IO, "%s: %s", path, strerror(errno));
        st = read_all(fd, path, &text, &len, err);
        close(fd);
    }
    if (st != FC_OK)
        return st;
    st = ex_digits_parse(text, len, path, out, err);
    fc_free(text);
    return st;
}
