/*
 * epoll_echo: the C anchor of scripts/bench.py, a single-threaded epoll echo server.
 *
 *   epoll_echo --port P [--host 127.0.0.1] [--max-seconds S]
 *
 * What a careful C programmer would write for TCP echo: one thread,
 * non-blocking sockets registered level-triggered, TCP_NODELAY, 64 KiB
 * reads; what the peer does not take at once is kept and sent when the
 * socket is writable, and reading that connection pauses meanwhile (bounded
 * memory).  It is the floor: the kernel's cost of a round trip and little
 * else.  127.0.0.0/8 only; it exits when its parent process is gone or after
 * --max-seconds; SIGTERM ends it at once.
 */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CHUNK 65536
#define MAX_EVENTS 256
#define MAX_FDS 1048576

struct conn {
    unsigned char *pending; /* unsent bytes of the last read, or NULL */
    size_t offset, length;
};

static struct conn *conns;
static unsigned char buffer[CHUNK];

static void fail(const char *what)
{
    fprintf(stderr, "epoll_echo: %s: %s\n", what, strerror(errno));
    exit(1);
}

static double monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int listen_on(const char *host, int port)
{
    struct sockaddr_in addr;
    int one = 1, fd;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)port);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1
        || (ntohl(addr.sin_addr.s_addr) >> 24) != 127) {
        fprintf(stderr, "epoll_echo: --host must be a loopback address 127.x.x.x\n");
        exit(2);
    }
    fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0)
        fail("socket");
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0)
        fail("bind");
    if (listen(fd, 1024) < 0)
        fail("listen");
    return fd;
}

static void set_events(int ep, int fd, unsigned events)
{
    struct epoll_event ev;
    ev.events = events;
    ev.data.fd = fd;
    epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
}

static void drop(int ep, int fd)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
    free(conns[fd].pending);
    conns[fd].pending = NULL;
    close(fd);
}

static void accept_all(int ep, int lfd)
{
    for (;;) {
        struct epoll_event ev;
        int one = 1, fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
        if (fd < 0)
            return;
        if (fd >= MAX_FDS) {
            close(fd);
            continue;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        ev.events = EPOLLIN;
        ev.data.fd = fd;
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
            close(fd);
    }
}

/* Send what the socket takes; keep the rest.  Returns 0 when the peer is gone. */
static int flush(int ep, int fd, const unsigned char *data, size_t length)
{
    struct conn *c = &conns[fd];
    size_t sent = 0;
    while (sent < length) {
        ssize_t n = send(fd, data + sent, length - sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN)
                break;
            return 0;
        }
        sent += n;
    }
    if (sent == length) {
        if (c->pending) {
            free(c->pending);
            c->pending = NULL;
            set_events(ep, fd, EPOLLIN);
        }
        return 1;
    }
    if (!c->pending) {
        c->pending = malloc(CHUNK);
        if (!c->pending)
            return 0;
        set_events(ep, fd, EPOLLOUT);
    }
    memmove(c->pending, data + sent, length - sent);
    c->offset = 0;
    c->length = length - sent;
    return 1;
}

static void serve(int ep, int fd, unsigned events)
{
    struct conn *c = &conns[fd];
    ssize_t n;
    if (c->pending) {
        if (!flush(ep, fd, c->pending + c->offset, c->length - c->offset))
            drop(ep, fd);
        return;
    }
    if (!(events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
        return;
    n = recv(fd, buffer, sizeof buffer, 0);
    if (n < 0 && errno == EAGAIN)
        return;
    if (n <= 0 || !flush(ep, fd, buffer, (size_t)n))
        drop(ep, fd);
}

int main(int argc, char **argv)
{
    struct epoll_event events[MAX_EVENTS], ev;
    const char *host = "127.0.0.1";
    int i, port = 0, ep, lfd;
    double max_seconds = 3600, deadline, next_check = 0;
    pid_t parent = getppid();
    for (i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--port"))
            port = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--host"))
            host = argv[i + 1];
        else if (!strcmp(argv[i], "--max-seconds"))
            max_seconds = atof(argv[i + 1]);
    }
    if (port <= 0 || port > 65535 || !(max_seconds > 0)) {
        fprintf(stderr, "usage: epoll_echo --port P [--host 127.0.0.1] [--max-seconds S]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    conns = calloc(MAX_FDS, sizeof *conns);
    if (!conns)
        fail("calloc");
    lfd = listen_on(host, port);
    ep = epoll_create1(0);
    if (ep < 0)
        fail("epoll_create1");
    ev.events = EPOLLIN;
    ev.data.fd = lfd;
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    deadline = monotonic() + max_seconds;
    for (;;) {
        int n = epoll_wait(ep, events, MAX_EVENTS, 500);
        double now = monotonic(); /* vDSO: no system call on the hot path */
        if (now >= next_check) {
            if (getppid() != parent || now > deadline)
                return 0;
            next_check = now + 0.5;
        }
        if (n < 0 && errno != EINTR)
            fail("epoll_wait");
        for (i = 0; i < n; i++) {
            if (events[i].data.fd == lfd)
                accept_all(ep, lfd);
            else
                serve(ep, events[i].data.fd, events[i].events);
        }
    }
}
