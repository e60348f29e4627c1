/* testutil.h: helpers shared by the unit and integration tests: temporary folders, running a
 * program of the build and capturing its output. */
#ifndef FC_TESTUTIL_H
#define FC_TESTUTIL_H

#include <stddef.h>

/* The test's private temporary folder: $FC_TEST_TMPDIR (set by tests/run-tests) or a new
 * mkdtemp folder under /tmp. Never NULL. */
const char *fc_test_tmpdir(void);
/* Writes "<tmpdir>/<name>" into buf and returns buf. */
char *fc_test_path(char *buf, size_t size, const char *name);
/* The build folder holding bin/ ($FC_BUILD_DIR, default "build"). */
const char *fc_test_build_dir(void);

/* Runs argv[0] (a path) with argv, stdout and stderr sent to files (either may be NULL to
 * discard), waits at most timeout_s seconds (then kills it) and returns its exit status, or
 * 128 + signal number if it was killed, or -1 if it could not be started. */
int fc_test_run(const char *const argv[], const char *stdout_path, const char *stderr_path,
                int timeout_s);
/* Reads a whole (small) file into a NUL-terminated heap string; NULL on failure. */
char *fc_test_slurp(const char *path, size_t *len);

#endif
