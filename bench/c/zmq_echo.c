/* A ZeroMQ round trip with no Python at either end, for bench_placement.py: the floor of the
 * libzmq that pyzmq loads (linked against that very library, so no zmq.h is needed: the few
 * functions used are declared here, as zmq.h declares them).
 *
 *   zmq_echo server ENDPOINT          a ROUTER that sends every message back; prints "bound"
 *   zmq_echo client ENDPOINT COUNT    a DEALER: COUNT round trips of a request's size (a
 *                                     30-byte header and a 16-byte key), after COUNT/10 to
 *                                     warm up; prints the median in microseconds
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void *zmq_ctx_new(void);
void *zmq_socket(void *context, int type);
int zmq_bind(void *socket, const char *endpoint);
int zmq_connect(void *socket, const char *endpoint);
int zmq_send(void *socket, const void *buf, size_t len, int flags);
int zmq_recv(void *socket, void *buf, size_t len, int flags);
int zmq_getsockopt(void *socket, int option, void *value, size_t *len);

enum { ZMQ_DEALER = 5, ZMQ_ROUTER = 6, ZMQ_SNDMORE = 2, ZMQ_RCVMORE = 13 };

static long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

static int by_value(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

static int serve(void *sock) {
    char frame[4096];
    for (;;) {  /* routing id, then the frames, each sent back as it comes */
        int more = 1;
        size_t more_len = sizeof more;
        while (more) {
            int n = zmq_recv(sock, frame, sizeof frame, 0);
            if (n < 0 || zmq_getsockopt(sock, ZMQ_RCVMORE, &more, &more_len) != 0)
                return 1;
            if (zmq_send(sock, frame, (size_t)n, more ? ZMQ_SNDMORE : 0) < 0)
                return 1;
        }
    }
}

static int measure(void *sock, int count) {
    char header[30] = "SHMKV/2", key[16] = "0123456789abcdef", reply[4096];
    int warm = count / 10;
    long *times = malloc(sizeof(long) * (size_t)count);
    if (times == NULL)
        return 1;
    for (int i = 0; i < warm + count; i++) {
        long started = now_ns();
        if (zmq_send(sock, header, sizeof header, ZMQ_SNDMORE) < 0
                || zmq_send(sock, key, sizeof key, 0) < 0
                || zmq_recv(sock, reply, sizeof reply, 0) < 0
                || zmq_recv(sock, reply, sizeof reply, 0) < 0)
            return 1;
        if (i >= warm)
            times[i - warm] = now_ns() - started;
    }
    qsort(times, (size_t)count, sizeof(long), by_value);
    printf("%.1f\n", times[count / 2] / 1000.0);
    free(times);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3)
        return 2;
    void *context = zmq_ctx_new();
    if (strcmp(argv[1], "server") == 0) {
        void *sock = zmq_socket(context, ZMQ_ROUTER);
        if (zmq_bind(sock, argv[2]) != 0)
            return 1;
        printf("bound\n");
        fflush(stdout);
        return serve(sock);
    }
    void *sock = zmq_socket(context, ZMQ_DEALER);
    if (argc < 4 || zmq_connect(sock, argv[2]) != 0)
        return 2;
    return measure(sock, atoi(argv[3]));
}
