/*
 * loadgen: a small load generator for scripts/bench.py (TCP or UDP echo ping-pong).
 *
 *   loadgen tcp|udp --port P [--host 127.0.0.1] [--conns N] [--size BYTES]
 *           [--seconds T] [--max-rounds R] [--batch B] [--connect-timeout S]
 *           [--go-timeout S] [--reply-timeout S]
 *
 * It opens N connections (TCP: non-blocking, TCP_NODELAY, each checked by a
 * one-byte echo so the server really holds it; UDP: N connected sockets),
 * prints one JSON line {"phase": "ready", ...}, then waits for a line
 * "go START" on stdin, START being a CLOCK_MONOTONIC time in seconds (what
 * Python's time.monotonic() returns on Linux).  It starts the ping-pong at
 * once; the time until START is the warm-up, not recorded; the measured
 * window is [START, START + T).  A round trip counts when its ping was sent
 * inside the window and its echo completed inside it.  At the end it prints
 * {"phase": "done", ...}: rounds, the latency histogram (log-linear, 32
 * sub-buckets per power of two of nanoseconds: under 3.2% error), per
 * connection round trips, connections served in each whole second, errors,
 * UDP losses and stale replies, its own CPU seconds.
 *
 * Safety: 127.0.0.0/8 only (anything else is refused); every count, size and
 * time is bounded, and alarm() ends the process whatever happens.  End of
 * file or "stop" on stdin before "go" makes it exit quietly.
 * Exit status: 0 done, 2 bad arguments, 1 a system call failed.
 */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 20000
#define MAX_TCP_SIZE (16 << 20)
#define MAX_UDP_SIZE 65507
#define MAX_SECONDS 600.0
#define MAX_WARMUP 60.0
#define MAX_WAIT 600.0
#define RECV_CHUNK 262144
#define MAX_EVENTS 256

/* Histogram: values (ns) below 2 * SUB are exact; above, SUB buckets per octave. */
#define SUB_BITS 5
#define SUB (1 << SUB_BITS)
#define MAX_OCTAVE 40 /* 2^40 ns is 18 minutes, far above any bound here */
#define BUCKETS (2 * SUB + (MAX_OCTAVE - SUB_BITS - 1) * SUB)

struct options {
    int udp;
    struct sockaddr_in addr;
    long conns, size, max_rounds, batch;
    double seconds, connect_timeout, go_timeout, reply_timeout;
};

struct conn {
    int fd;
    int alive;
    int writing;
    long sent, received;
    int64_t t_send;   /* ns; 0 when no ping is outstanding */
    int64_t deadline; /* UDP: when the reply counts as lost */
    uint64_t seq;     /* UDP sequence number */
    long rounds;
    long last_second;
};

struct results {
    uint64_t hist[BUCKETS];
    int64_t max_ns, min_ns;
    long rounds, errors, losses, stale;
    long *per_second;
    long seconds_slots;
    double cpu0;
};

static unsigned char *payload;
static unsigned char recv_buf[RECV_CHUNK];

static void fail(int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("loadgen: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(status);
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec
           + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static int bucket_of(int64_t value)
{
    uint64_t v = value < 0 ? 0 : (uint64_t)value;
    int msb, shift, index;
    if (v < 2 * SUB)
        return (int)v;
    msb = 63 - __builtin_clzll(v);
    if (msb >= MAX_OCTAVE)
        return BUCKETS - 1;
    shift = msb - SUB_BITS;
    index = 2 * SUB + (msb - SUB_BITS - 1) * SUB + (int)((v >> shift) - SUB);
    return index;
}

/* The middle of a bucket, as the Python side computes it (benchlib.stats). */
static int64_t bucket_value(int index)
{
    int octave, shift;
    int64_t sub;
    if (index < 2 * SUB)
        return index;
    octave = (index - 2 * SUB) / SUB + SUB_BITS + 1;
    sub = SUB + (index - 2 * SUB) % SUB;
    shift = octave - SUB_BITS;
    return (sub << shift) + ((int64_t)1 << shift) / 2;
}

static int64_t percentile_ns(const struct results *r, double q)
{
    uint64_t rank, seen = 0;
    int i;
    if (r->rounds == 0)
        return -1;
    rank = (uint64_t)(q / 100.0 * r->rounds + 0.999999);
    if (rank < 1)
        rank = 1;
    for (i = 0; i < BUCKETS; i++) {
        seen += r->hist[i];
        if (seen >= rank) {
            int64_t v = bucket_value(i);
            return v > r->max_ns ? r->max_ns : v;
        }
    }
    return r->max_ns;
}

static double parse_number(const char *name, const char *text, double lo, double hi)
{
    char *end;
    double v;
    errno = 0;
    v = strtod(text, &end);
    if (errno || end == text || *end || !(v >= lo && v <= hi))
        fail(2, "%s must be a number in %g..%g (got '%s')", name, lo, hi, text);
    return v;
}

static void parse_host(struct options *o, const char *text)
{
    if (inet_pton(AF_INET, text, &o->addr.sin_addr) != 1)
        fail(2, "--host must be an IPv4 address (got '%s')", text);
    if ((ntohl(o->addr.sin_addr.s_addr) >> 24) != 127)
        fail(2, "--host must be a loopback address 127.x.x.x (got '%s'): "
                "this generator floods its target", text);
}

static void parse_args(struct options *o, int argc, char **argv)
{
    int i, port = 0;
    memset(o, 0, sizeof *o);
    o->addr.sin_family = AF_INET;
    o->addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    o->conns = 1;
    o->size = 64;
    o->seconds = 1.0;
    o->connect_timeout = 10.0;
    o->go_timeout = 60.0;
    o->reply_timeout = 0.2;
    if (argc < 2 || (strcmp(argv[1], "tcp") && strcmp(argv[1], "udp")))
        fail(2, "usage: loadgen tcp|udp --port P [--conns N] [--size B] [--seconds T] ...");
    o->udp = !strcmp(argv[1], "udp");
    for (i = 2; i < argc; i += 2) {
        const char *name = argv[i], *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (!value)
            fail(2, "%s needs a value", name);
        if (!strcmp(name, "--host"))
            parse_host(o, value);
        else if (!strcmp(name, "--port"))
            port = (int)parse_number(name, value, 1, 65535);
        else if (!strcmp(name, "--conns"))
            o->conns = (long)parse_number(name, value, 1, MAX_CONNS);
        else if (!strcmp(name, "--size"))
            o->size = (long)parse_number(name, value, 1, MAX_TCP_SIZE);
        else if (!strcmp(name, "--seconds"))
            o->seconds = parse_number(name, value, 0.001, MAX_SECONDS);
        else if (!strcmp(name, "--max-rounds"))
            o->max_rounds = (long)parse_number(name, value, 0, 1e12);
        else if (!strcmp(name, "--batch"))
            o->batch = (long)parse_number(name, value, 0, MAX_CONNS);
        else if (!strcmp(name, "--connect-timeout"))
            o->connect_timeout = parse_number(name, value, 0.001, MAX_WAIT);
        else if (!strcmp(name, "--go-timeout"))
            o->go_timeout = parse_number(name, value, 0.001, MAX_WAIT);
        else if (!strcmp(name, "--reply-timeout"))
            o->reply_timeout = parse_number(name, value, 0.001, 10);
        else
            fail(2, "unknown option %s", name);
    }
    if (!port)
        fail(2, "--port is required");
    if (o->udp && (o->size < 8 || o->size > MAX_UDP_SIZE))
        fail(2, "--size must be 8..%d for udp (got %ld)", MAX_UDP_SIZE, o->size);
    o->addr.sin_port = htons((unsigned short)port);
}

static void raise_nofile(long wanted)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)wanted + 64) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void make_payload(long size)
{
    long i;
    payload = malloc(size);
    if (!payload)
        fail(1, "out of memory");
    for (i = 0; i < size; i++)
        payload[i] = (unsigned char)i;
}

/* -- connecting -------------------------------------------------------- */

enum { CONNECTING, CHECKING, READY, FAILED };

static void watch(int ep, int fd, uint32_t events, long index, int op)
{
    struct epoll_event ev;
    ev.events = events;
    ev.data.u64 = (uint64_t)index;
    if (epoll_ctl(ep, op, fd, &ev) < 0 && op != EPOLL_CTL_DEL)
        fail(1, "epoll_ctl: %s", strerror(errno));
}

static int start_connect(const struct options *o)
{
    int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (const struct sockaddr *)&o->addr, sizeof o->addr) < 0
        && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Advance one connection of the batch on an event; returns its new state. */
static int check_step(int ep, struct conn *c, long index, int state, uint32_t events)
{
    char byte;
    int err = 0;
    socklen_t len = sizeof err;
    if (state == CONNECTING) {
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err)
            return FAILED;
        if (send(c->fd, "!", 1, MSG_NOSIGNAL) != 1)
            return FAILED;
        watch(ep, c->fd, EPOLLIN, index, EPOLL_CTL_MOD);
        return CHECKING;
    }
    if (events & EPOLLIN) {
        ssize_t n = recv(c->fd, &byte, 1, 0);
        if (n < 0 && errno == EAGAIN)
            return CHECKING;
        return n == 1 && byte == '!' ? READY : FAILED;
    }
    return FAILED;
}

/* Open one batch of connections [first, first + count); returns the seconds
 * until the last connect completed (the served time is the caller's clock). */
static int64_t open_batch(const struct options *o, struct conn *conns, int *state,
                          long first, long count, int64_t deadline)
{
    struct epoll_event events[MAX_EVENTS];
    int64_t connected_at = 0;
    long i, pending = 0;
    int ep = epoll_create1(0);
    if (ep < 0)
        fail(1, "epoll_create1: %s", strerror(errno));
    for (i = first; i < first + count; i++) {
        conns[i].fd = start_connect(o);
        state[i] = conns[i].fd < 0 ? FAILED : CONNECTING;
        if (state[i] == CONNECTING) {
            watch(ep, conns[i].fd, EPOLLOUT, i, EPOLL_CTL_ADD);
            pending++;
        }
    }
    while (pending > 0 && now_ns() < deadline) {
        int n, k, timeout = (int)((deadline - now_ns()) / 1000000) + 1;
        n = epoll_wait(ep, events, MAX_EVENTS, timeout > 100 ? 100 : timeout);
        for (k = 0; k < n; k++) {
            long idx = (long)events[k].data.u64;
            int was = state[idx];
            state[idx] = check_step(ep, &conns[idx], idx, was, events[k].events);
            if (was == CONNECTING && state[idx] != FAILED)
                connected_at = now_ns();
            if (state[idx] == READY || state[idx] == FAILED) {
                watch(ep, conns[idx].fd, 0, idx, EPOLL_CTL_DEL);
                pending--;
            }
        }
    }
    for (i = first; i < first + count; i++) {
        if (state[i] != READY) {
            if (conns[i].fd >= 0)
                close(conns[i].fd);
            conns[i].fd = -1;
            state[i] = FAILED;
        }
    }
    close(ep);
    return connected_at;
}

/* Open and check every connection; keep the served ones at the front of conns. */
static long open_served(const struct options *o, struct conn *conns, long *failures,
                        double *connect_s, double *served_s)
{
    int64_t started = now_ns(), deadline = started + (int64_t)(o->connect_timeout * 1e9);
    int64_t last_connect = started;
    long done = 0, served = 0, i;
    int *state = calloc(o->conns, sizeof *state);
    if (!state)
        fail(1, "out of memory");
    while (done < o->conns && now_ns() < deadline) {
        long count = o->batch > 0 && o->batch < o->conns - done ? o->batch : o->conns - done;
        int64_t at = open_batch(o, conns, state, done, count, deadline);
        if (at > last_connect)
            last_connect = at;
        done += count;
    }
    for (i = 0; i < o->conns; i++)
        if (i < done && state[i] == READY)
            conns[served++] = conns[i];
    free(state);
    *failures = o->conns - served;
    *connect_s = (last_connect - started) / 1e9;
    *served_s = (now_ns() - started) / 1e9;
    return served;
}

static long open_udp(const struct options *o, struct conn *conns)
{
    long i;
    for (i = 0; i < o->conns; i++) {
        int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
        if (fd < 0)
            fail(1, "socket: %s", strerror(errno));
        if (connect(fd, (const struct sockaddr *)&o->addr, sizeof o->addr) < 0)
            fail(1, "connect: %s", strerror(errno));
        conns[i].fd = fd;
    }
    return o->conns;
}

/* -- waiting for the start ------------------------------------------------ */

/* Returns the start time in ns, or -1 when told to stop (or the parent left). */
static int64_t await_go(double timeout)
{
    char line[128];
    size_t used = 0;
    struct pollfd pfd = {0, POLLIN, 0};
    int64_t deadline = now_ns() + (int64_t)(timeout * 1e9);
    while (used < sizeof line - 1) {
        int left = (int)((deadline - now_ns()) / 1000000);
        ssize_t n;
        if (left <= 0 || poll(&pfd, 1, left) <= 0)
            return -1;
        n = read(0, line + used, 1);
        if (n <= 0)
            return -1;
        if (line[used] == '\n')
            break;
        used++;
    }
    line[used] = 0;
    if (strncmp(line, "go ", 3) == 0) {
        int64_t start = (int64_t)(parse_number("start time", line + 3, 0, 1e12) * 1e9);
        if (start - now_ns() > (int64_t)(MAX_WARMUP * 1e9))
            fail(2, "start time is more than %g s ahead", MAX_WARMUP);
        return start;
    }
    return -1;
}

/* -- recording ------------------------------------------------------------ */

static void record(struct results *r, struct conn *c, int64_t sent, int64_t now,
                   int64_t start, int64_t end)
{
    int64_t latency = now - sent;
    long second;
    if (sent < start || now > end)
        return;
    r->hist[bucket_of(latency)]++;
    if (latency > r->max_ns)
        r->max_ns = latency;
    if (r->min_ns < 0 || latency < r->min_ns)
        r->min_ns = latency;
    r->rounds++;
    c->rounds++;
    second = (long)((now - start) / 1000000000);
    if (second != c->last_second && second < r->seconds_slots) {
        r->per_second[second]++;
        c->last_second = second;
    }
}

/* The generator's own CPU is counted from the start of the measured window. */
static void mark_start(struct results *r, int64_t now, int64_t start, int *marked)
{
    if (!*marked && now >= start) {
        r->cpu0 = cpu_seconds();
        *marked = 1;
    }
}

/* -- TCP ping-pong ---------------------------------------------------------- */

static void set_writing(int ep, struct conn *c, long index, int writing)
{
    if (c->writing != writing) {
        c->writing = writing;
        watch(ep, c->fd, EPOLLIN | (writing ? EPOLLOUT : 0), index, EPOLL_CTL_MOD);
    }
}

static void retire(int ep, struct conn *c, long index)
{
    if (c->alive) {
        c->alive = 0;
        watch(ep, c->fd, 0, index, EPOLL_CTL_DEL);
    }
}

/* Returns 0 when the connection failed. */
static int tcp_write(int ep, struct conn *c, long index, long size)
{
    while (c->sent < size) {
        ssize_t n = send(c->fd, payload + c->sent, size - c->sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN)
                break;
            return 0;
        }
        c->sent += n;
    }
    set_writing(ep, c, index, c->sent < size);
    return 1;
}

static int tcp_send_next(int ep, struct conn *c, long index, long size)
{
    c->sent = c->received = 0;
    c->t_send = now_ns();
    return tcp_write(ep, c, index, size);
}

/* Returns 1 while the connection may go on, 0 when it failed. */
static int tcp_read(struct conn *c, long size, int *complete)
{
    long want = size - c->received;
    ssize_t n = recv(c->fd, recv_buf, want < RECV_CHUNK ? want : RECV_CHUNK, 0);
    *complete = 0;
    if (n < 0)
        return errno == EAGAIN;
    if (n == 0 || c->t_send == 0 || memcmp(recv_buf, payload + c->received, n))
        return 0; /* closed, unasked-for bytes, or wrong bytes */
    c->received += n;
    *complete = c->received == size;
    return 1;
}

static void tcp_event(const struct options *o, int ep, struct conn *c, long index,
                      uint32_t events, struct results *r, int64_t start, int64_t end,
                      long *active)
{
    int complete = 0, ok = 1;
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP))
        ok = tcp_read(c, o->size, &complete);
    if (ok && complete) {
        int64_t now = now_ns();
        record(r, c, c->t_send, now, start, end);
        c->t_send = 0;
        if (o->max_rounds && c->rounds >= o->max_rounds) {
            retire(ep, c, index);
            (*active)--;
            return;
        }
        if (now < end)
            ok = tcp_send_next(ep, c, index, o->size);
    } else if (ok && (events & EPOLLOUT)) {
        ok = tcp_write(ep, c, index, o->size);
    }
    if (!ok) {
        r->errors++;
        retire(ep, c, index);
        (*active)--;
    }
}

static int64_t run_tcp(const struct options *o, struct conn *conns, long count,
                       struct results *r, int64_t start, int64_t end)
{
    int marked = 0;
    struct epoll_event events[MAX_EVENTS];
    long i, active = count;
    int64_t now = now_ns();
    int ep = epoll_create1(0);
    if (ep < 0)
        fail(1, "epoll_create1: %s", strerror(errno));
    for (i = 0; i < count; i++) {
        conns[i].alive = 1;
        watch(ep, conns[i].fd, EPOLLIN, i, EPOLL_CTL_ADD);
    }
    for (i = 0; i < count; i++) {
        if (!tcp_send_next(ep, &conns[i], i, o->size)) {
            r->errors++;
            retire(ep, &conns[i], i);
            active--;
        }
    }
    while (active > 0 && now < end) {
        int k, n, timeout = (int)((end - now) / 1000000) + 1;
        n = epoll_wait(ep, events, MAX_EVENTS, timeout > 50 ? 50 : timeout);
        for (k = 0; k < n; k++) {
            long idx = (long)events[k].data.u64;
            if (conns[idx].alive)
                tcp_event(o, ep, &conns[idx], idx, events[k].events, r, start, end, &active);
        }
        now = now_ns();
        mark_start(r, now, start, &marked);
    }
    close(ep);
    return now;
}

/* -- UDP ping-pong ---------------------------------------------------------- */

static void udp_send(struct conn *c, long size, double reply_timeout, struct results *r)
{
    int b;
    c->seq++;
    for (b = 0; b < 8; b++)
        payload[b] = (unsigned char)(c->seq >> (56 - 8 * b));
    c->t_send = now_ns();
    c->deadline = c->t_send + (int64_t)(reply_timeout * 1e9);
    if (send(c->fd, payload, size, 0) < 0 && errno != EAGAIN)
        r->errors++; /* EAGAIN: a full buffer, seen as a loss at the deadline */
}

static int udp_matches(const struct conn *c, ssize_t n, long size)
{
    int b;
    if (n != size)
        return 0;
    for (b = 0; b < 8; b++)
        if (recv_buf[b] != (unsigned char)(c->seq >> (56 - 8 * b)))
            return 0;
    return memcmp(recv_buf + 8, payload + 8, size - 8) == 0;
}

static void udp_drain(const struct options *o, struct conn *c, struct results *r,
                      int64_t start, int64_t end)
{
    int k;
    for (k = 0; k < 64; k++) {
        ssize_t n = recv(c->fd, recv_buf, sizeof recv_buf, 0);
        int64_t now;
        if (n < 0) {
            if (errno == EAGAIN)
                return;
            r->errors++; /* e.g. ICMP port unreachable on a connected socket */
            continue;
        }
        if (!udp_matches(c, n, o->size)) {
            r->stale++;
            continue;
        }
        now = now_ns();
        record(r, c, c->t_send, now, start, end);
        if (now < end)
            udp_send(c, o->size, o->reply_timeout, r);
    }
}

static int64_t run_udp(const struct options *o, struct conn *conns, long count,
                       struct results *r, int64_t start, int64_t end)
{
    int marked = 0;
    struct epoll_event events[MAX_EVENTS];
    long i;
    int64_t now = now_ns();
    int ep = epoll_create1(0);
    if (ep < 0)
        fail(1, "epoll_create1: %s", strerror(errno));
    for (i = 0; i < count; i++) {
        watch(ep, conns[i].fd, EPOLLIN, i, EPOLL_CTL_ADD);
        udp_send(&conns[i], o->size, o->reply_timeout, r);
    }
    while (now < end) {
        int64_t nearest = end;
        int k, n, timeout;
        for (i = 0; i < count; i++) {
            if (conns[i].deadline <= now) {
                if (conns[i].t_send >= start)
                    r->losses++;
                udp_send(&conns[i], o->size, o->reply_timeout, r);
            }
            if (conns[i].deadline < nearest)
                nearest = conns[i].deadline;
        }
        timeout = (int)((nearest - now) / 1000000) + 1;
        n = epoll_wait(ep, events, MAX_EVENTS, timeout > 50 ? 50 : timeout);
        for (k = 0; k < n; k++)
            udp_drain(o, &conns[events[k].data.u64], r, start, end);
        now = now_ns();
        mark_start(r, now, start, &marked);
    }
    close(ep);
    return now;
}

/* -- output ------------------------------------------------------------------ */

static void print_ready(long connected, long failures, double connect_s, double served_s)
{
    printf("{\"phase\": \"ready\", \"connected\": %ld, \"failures\": %ld, "
           "\"connect_s\": %.6f, \"served_s\": %.6f}\n",
           connected, failures, connect_s, served_s);
    fflush(stdout);
}

static void print_done(const struct options *o, const struct results *r,
                       const struct conn *conns, long count, double seconds,
                       double oldest, double cpu)
{
    long i;
    int first = 1;
    printf("{\"phase\": \"done\", \"mode\": \"%s\", \"rounds\": %ld, \"seconds\": %.6f, "
           "\"errors\": %ld, \"losses\": %ld, \"stale\": %ld, \"cpu_s\": %.6f, ",
           o->udp ? "udp" : "tcp", r->rounds, seconds, r->errors, r->losses, r->stale, cpu);
    printf("\"p50_ns\": %lld, \"p99_ns\": %lld, \"max_ns\": %lld, \"min_ns\": %lld, ",
           (long long)percentile_ns(r, 50), (long long)percentile_ns(r, 99),
           (long long)(r->rounds ? r->max_ns : -1), (long long)r->min_ns);
    if (oldest >= 0)
        printf("\"oldest_pending\": %.6f, ", oldest);
    else
        printf("\"oldest_pending\": null, ");
    printf("\"hist_sub_bits\": %d, \"hist\": [", SUB_BITS);
    for (i = 0; i < BUCKETS; i++) {
        if (r->hist[i]) {
            printf("%s[%ld, %llu]", first ? "" : ", ", i, (unsigned long long)r->hist[i]);
            first = 0;
        }
    }
    printf("], \"per_conn\": [");
    for (i = 0; i < count; i++)
        printf("%s%ld", i ? ", " : "", conns[i].rounds);
    printf("], \"per_second\": [");
    for (i = 0; i < r->seconds_slots; i++)
        printf("%s%ld", i ? ", " : "", r->per_second[i]);
    printf("]}\n");
    fflush(stdout);
}

static double oldest_pending(const struct conn *conns, long count, int64_t now, int udp)
{
    double oldest = -1;
    long i;
    for (i = 0; i < count; i++) {
        if ((udp || conns[i].alive) && conns[i].t_send) {
            double age = (now - conns[i].t_send) / 1e9;
            if (age > oldest)
                oldest = age;
        }
    }
    return oldest;
}

int main(int argc, char **argv)
{
    struct options o;
    struct results r;
    struct conn *conns;
    long count, failures = 0, i;
    double connect_s = 0, served_s = 0;
    int64_t start, end, stopped, last;

    parse_args(&o, argc, argv);
    signal(SIGPIPE, SIG_IGN);
    /* The hard bound: whatever happens, this process is gone by then. */
    alarm((unsigned)(o.connect_timeout + o.go_timeout + MAX_WARMUP + o.seconds + 10));
    raise_nofile(o.conns);
    make_payload(o.size);
    conns = calloc(o.conns, sizeof *conns);
    if (!conns)
        fail(1, "out of memory");
    for (i = 0; i < o.conns; i++)
        conns[i].last_second = -1;
    count = o.udp ? open_udp(&o, conns) : open_served(&o, conns, &failures, &connect_s,
                                                      &served_s);
    print_ready(count, failures, connect_s, served_s);
    start = await_go(o.go_timeout);
    if (start < 0)
        return 0;
    end = start + (int64_t)(o.seconds * 1e9);
    memset(&r, 0, sizeof r);
    r.min_ns = -1;
    r.seconds_slots = (long)(o.seconds + 0.999999);
    r.per_second = calloc(r.seconds_slots, sizeof *r.per_second);
    if (!r.per_second)
        fail(1, "out of memory");
    r.cpu0 = cpu_seconds();
    stopped = o.udp ? run_udp(&o, conns, count, &r, start, end)
                    : run_tcp(&o, conns, count, &r, start, end);
    last = stopped < end ? stopped : end;
    print_done(&o, &r, conns, count, last > start ? (last - start) / 1e9 : 0.0,
               oldest_pending(conns, count, stopped, o.udp), cpu_seconds() - r.cpu0);
    for (i = 0; i < count; i++)
        close(conns[i].fd);
    return 0;
}
