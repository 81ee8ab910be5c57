/* The idle floor of bench/run.sh: a static program that makes the idle
 * daemon's wake-ups and nothing else. It waits in epoll_wait, wakes every
 * PERIOD seconds on a timerfd and, when PORT is given, sends PING to
 * redis-server on 127.0.0.1:PORT over one TCP connection and reads the
 * +PONG through the same epoll (as the daemon's health check does every
 * check_interval). With WD_PERIOD and NOTIFY_PATH it also sends
 * "WATCHDOG=1" to the unix datagram socket NOTIFY_PATH every WD_PERIOD
 * seconds, on a second timerfd (the systemd watchdog pings, half of
 * WatchdogSec). Its CPU over the same 30 s as the daemon's shows what
 * those wake-ups cost on this machine at that moment, whatever the daemon
 * does in them; on a shared VM that varies several-fold from run to run.
 *
 *   idle-floor PERIOD [PORT [WD_PERIOD NOTIFY_PATH]]
 *                               runs until killed; prints nothing
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <string.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <unistd.h>

/* A timerfd firing every `seconds`, watched by epoll `ep`; -1 on error. */
static int periodic_timer(int ep, int seconds) {
    int fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    struct itimerspec its = {{seconds, 0}, {seconds, 0}};
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    if (fd < 0 || timerfd_settime(fd, 0, &its, NULL) != 0 ||
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0)
        return -1;
    return fd;
}

int main(int argc, char **argv) {
    int period = argc > 1 ? atoi(argv[1]) : 10;
    int port = argc > 2 ? atoi(argv[2]) : 0;
    int wd_period = argc > 4 ? atoi(argv[3]) : 0;
    if (period <= 0 || (argc > 3 && (argc != 5 || wd_period <= 0))) {
        fprintf(stderr, "usage: idle-floor PERIOD [PORT [WD_PERIOD NOTIFY_PATH]]\n");
        return 2;
    }
    int ep = epoll_create1(EPOLL_CLOEXEC);
    int tfd = ep < 0 ? -1 : periodic_timer(ep, period);
    if (tfd < 0) {
        perror("idle-floor: epoll/timerfd");
        return 1;
    }
    int s = -1;
    if (port > 0) {
        s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) != 0) {
            perror("idle-floor: connect 127.0.0.1");
            return 1;
        }
        struct epoll_event e2 = {.events = EPOLLIN, .data.fd = s};
        epoll_ctl(ep, EPOLL_CTL_ADD, s, &e2);
    }
    int wfd = -1, nsock = -1;
    struct sockaddr_un notify = {.sun_family = AF_UNIX};
    if (wd_period > 0) {
        strncpy(notify.sun_path, argv[4], sizeof notify.sun_path - 1);
        wfd = periodic_timer(ep, wd_period);
        nsock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (wfd < 0 || nsock < 0) {
            perror("idle-floor: watchdog timerfd/socket");
            return 1;
        }
    }
    for (;;) {
        struct epoll_event got[4];
        int n = epoll_wait(ep, got, 4, -1);
        for (int i = 0; i < n; i++) {
            if (got[i].data.fd == tfd) {
                uint64_t expirations;
                if (read(tfd, &expirations, sizeof expirations) < 0) continue;
                if (s >= 0 && write(s, "*1\r\n$4\r\nPING\r\n", 14) != 14) return 1;
            } else if (got[i].data.fd == wfd) {
                uint64_t expirations;
                if (read(wfd, &expirations, sizeof expirations) < 0) continue;
                sendto(nsock, "WATCHDOG=1\n", 11, MSG_DONTWAIT, (struct sockaddr *)&notify,
                       sizeof notify);
            } else {
                char buf[64];
                if (read(s, buf, sizeof buf) <= 0) return 1;
            }
        }
    }
}
