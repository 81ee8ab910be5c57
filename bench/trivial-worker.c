/* The benchmark's trivial worker: a tiny static program standing in for
 * `celery worker`, so the benchmark measures the daemon, not Python.
 *
 * On start it appends one line "start PID MONOTONIC_NS REALTIME_NS" to the
 * file named by $BENCH_RECORD, then waits in pause(). On SIGTERM or SIGINT
 * it appends "exit PID MONOTONIC_NS REALTIME_NS" and exits 0. Its arguments
 * (-A x worker -Q ...) are ignored.
 *
 * The record file is opened without O_CREAT (the harness creates it 0666 in
 * a non-sticky directory, so the worker's user may write it whatever
 * fs.protected_regular says). Each line is one small O_APPEND write(),
 * which is atomic, so 200 workers can share one file.
 *
 * `trivial-worker --exec-floor N` measures the floor under every start
 * figure instead: N times, it forks and execs itself from this tiny process
 * and prints the time from just before fork() to the child's main() in ns,
 * one line per run (fork + exec + the static libc's start-up, which in a VM
 * includes slow CPUID exits).
 *
 * Built by bench/run.sh with: gcc -O2 -static -o trivial-worker trivial-worker.c
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int record_fd = -1;
static long my_pid;

/* Async-signal-safe decimal formatting: returns the new end of buf. */
static char *put_u64(char *p, unsigned long long v) {
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    while (n > 0)
        *p++ = tmp[--n];
    return p;
}

static unsigned long long ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ULL + (unsigned long long)ts.tv_nsec;
}

/* "KIND PID MONO REAL\n" in one write(); async-signal-safe. */
static int record(const char *kind, unsigned long long mono, unsigned long long real) {
    char line[96];
    char *p = line;
    size_t k = strlen(kind);
    memcpy(p, kind, k);
    p += k;
    *p++ = ' ';
    p = put_u64(p, (unsigned long long)my_pid);
    *p++ = ' ';
    p = put_u64(p, mono);
    *p++ = ' ';
    p = put_u64(p, real);
    *p++ = '\n';
    ssize_t len = p - line;
    return write(record_fd, line, (size_t)len) == len ? 0 : -1;
}

static void on_term(int sig) {
    (void)sig;
    if (record_fd >= 0) {
        unsigned long long mono = ns(CLOCK_MONOTONIC);
        record("exit", mono, ns(CLOCK_REALTIME));
    }
    _exit(0);
}

static int exec_floor(const char *self, int n) {
    for (int i = 0; i < n; i++) {
        char t0[24];
        snprintf(t0, sizeof t0, "%llu", ns(CLOCK_MONOTONIC));
        pid_t pid = fork();
        if (pid < 0)
            return 1;
        if (pid == 0) {
            char *argv[] = {(char *)self, "--floor-child", t0, NULL};
            char *envp[] = {NULL};
            execve(self, argv, envp);
            _exit(127);
        }
        int st;
        if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
            return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    unsigned long long mono = ns(CLOCK_MONOTONIC);
    unsigned long long real = ns(CLOCK_REALTIME);
    my_pid = (long)getpid();

    if (argc == 3 && strcmp(argv[1], "--floor-child") == 0) {
        printf("%llu\n", mono - strtoull(argv[2], NULL, 10));
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "--exec-floor") == 0) {
        setvbuf(stdout, NULL, _IOLBF, 0);
        return exec_floor(argv[0], atoi(argv[2]));
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    const char *path = getenv("BENCH_RECORD");
    if (path != NULL) {
        record_fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
        if (record_fd < 0 || record("start", mono, real) != 0) {
            static const char msg[] = "trivial-worker: cannot append to $BENCH_RECORD\n";
            write(2, msg, sizeof msg - 1);
            return 2;
        }
    }

    for (;;)
        pause();
}
