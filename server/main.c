/* main.c: the fedcoord daemon's entry point: the command line and configuration
 * (daemon_config.c), then the daemon (daemon.c). Exit status: 0 after an orderly stop, 1 on a
 * runtime failure, 2 on a configuration error. */
#include <stdio.h>

#include "server/daemon.h"
#include "server/daemon_config.h"

int main(int argc, char **argv) {
    dcfg *cfg = NULL;
    int rc = dcfg_main(argc, argv, stdout, stderr, &cfg);
    if (rc != DCFG_CONTINUE)
        return rc;
    rc = daemon_run(cfg);
    dcfg_free(cfg);
    return rc;
}
