/* A process for psmon's tests to watch, kill and count. Built by the tests
 * with the system C compiler, so that thread-group exits can be staged
 * exactly (Rust's runtime cannot pthread_exit its main thread).
 *
 *   victim exit N           exit(N) at once
 *   victim sleep            wait for a signal
 *   victim threads-first N  4 threads exit, then the main thread exits N
 *   victim leader-first N   the main thread pthread_exits; 300 ms later the
 *                           remaining thread ends the group with exit(N)
 *   victim forks K          fork K children that exit at once, reaping them
 *   victim group-exit N     4 threads; a non-leader one calls exit_group(N)
 *                           while the others (and the leader) still run
 *   victim nap MS           sleep MS milliseconds, then exit 0
 *   victim rename NAME      set comm to NAME (PR_SET_NAME), then wait
 *   victim serve PORT [REPLY] [DELAY_MS] [LISTEN_AFTER_MS]
 *                           a TCP server on 127.0.0.1:PORT: to each
 *                           connection, after DELAY_MS, REPLY (default
 *                           "+PONG") and a CRLF once it has read something;
 *                           it listens only LISTEN_AFTER_MS after it starts
 *   victim serve-unix PATH  listen on the Unix socket PATH, accept and close
 *   victim segv-on-usr1     wait; on SIGUSR1, dereference NULL (SIGSEGV)
 *   victim catch            catch SIGUSR2 (and do nothing) for ever
 *   victim hog-on-usr1      wait; on SIGUSR1, allocate and touch memory
 *                           1 MiB at a time until killed
 *   victim notify READY_MS BEATS
 *                           the sd_notify protocol on $NOTIFY_SOCKET: READY=1
 *                           after READY_MS, then WATCHDOG=1 every half
 *                           $WATCHDOG_USEC, BEATS times (-1: for ever), then
 *                           silence (a hang) while it keeps running
 *   victim serve-http PORT STATUS
 *                           an HTTP server on 127.0.0.1:PORT answering
 *                           every request with STATUS and an empty body
 */
#include <signal.h>
#include <stddef.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <pthread.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int code;
static volatile sig_atomic_t usr1;

static void on_usr1(int sig) {
    (void)sig;
    usr1 = 1;
}

static void nap_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

static void *quick(void *arg) {
    (void)arg;
    return NULL;
}

static void *idle(void *arg) {
    (void)arg;
    for (;;) pause();
    return NULL;
}

static void *group_ender(void *arg) {
    (void)arg;
    nap_ms(20);
    syscall(SYS_exit_group, code);
    return NULL;
}

static void *ender(void *arg) {
    (void)arg;
    nap_ms(300);
    exit(code);
}

/* A TCP socket listening on 127.0.0.1:port; -1 (and why, on stderr) if not. */
static int listen_loopback(int port) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(s, (struct sockaddr *)&a, sizeof a) != 0 || listen(s, 16) != 0) {
        perror("listen");
        return -1;
    }
    return s;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: victim exit N | sleep | threads-first N | leader-first N | forks K | group-exit N | nap MS | rename NAME\n");
        return 64;
    }
    int n = argc > 2 ? atoi(argv[2]) : 0;
    if (strcmp(argv[1], "exit") == 0) {
        return n;
    } else if (strcmp(argv[1], "sleep") == 0) {
        for (;;) pause();
    } else if (strcmp(argv[1], "threads-first") == 0) {
        pthread_t t[4];
        for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, quick, NULL);
        for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
        nap_ms(100);
        return n;
    } else if (strcmp(argv[1], "leader-first") == 0) {
        pthread_t t;
        code = n;
        pthread_create(&t, NULL, ender, NULL);
        pthread_exit(NULL);
    } else if (strcmp(argv[1], "group-exit") == 0) {
        pthread_t t[4];
        code = n;
        for (int i = 0; i < 3; i++) pthread_create(&t[i], NULL, idle, NULL);
        pthread_create(&t[3], NULL, group_ender, NULL);
        for (;;) pause();
    } else if (strcmp(argv[1], "nap") == 0) {
        nap_ms(n);
        return 0;
    } else if (strcmp(argv[1], "rename") == 0 && argc > 2) {
        prctl(PR_SET_NAME, argv[2], 0, 0, 0);
        for (;;) pause();
    } else if (strcmp(argv[1], "serve") == 0 && argc > 2) {
        const char *reply = argc > 3 ? argv[3] : "+PONG";
        long delay = argc > 4 ? atol(argv[4]) : 0;
        if (argc > 5) nap_ms(atol(argv[5]));
        int s = listen_loopback(n);
        if (s < 0) return 70;
        for (;;) {
            int c = accept(s, NULL, NULL);
            if (c < 0) continue;
            char buf[256];
            if (read(c, buf, sizeof buf) > 0) {
                nap_ms(delay);
                dprintf(c, "%s\r\n", reply);
            }
            close(c);
        }
    } else if (strcmp(argv[1], "serve-http") == 0 && argc > 3) {
        int s = listen_loopback(n);
        if (s < 0) return 70;
        for (;;) {
            int c = accept(s, NULL, NULL);
            if (c < 0) continue;
            char buf[2048];
            if (read(c, buf, sizeof buf) > 0) {
                dprintf(c, "HTTP/1.1 %s X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", argv[3]);
            }
            close(c);
        }
    } else if (strcmp(argv[1], "serve-unix") == 0 && argc > 2) {
        int s = socket(AF_UNIX, SOCK_STREAM, 0);
        struct sockaddr_un a = {0};
        a.sun_family = AF_UNIX;
        strncpy(a.sun_path, argv[2], sizeof a.sun_path - 1);
        unlink(argv[2]);
        if (bind(s, (struct sockaddr *)&a, sizeof a) != 0 || listen(s, 16) != 0) {
            perror("serve-unix");
            return 70;
        }
        for (;;) {
            int c = accept(s, NULL, NULL);
            if (c >= 0) close(c);
        }
    } else if (strcmp(argv[1], "segv-on-usr1") == 0 || strcmp(argv[1], "hog-on-usr1") == 0) {
        signal(SIGUSR1, on_usr1);
        while (!usr1) pause();
        if (argv[1][0] == 's') {
            *(volatile int *)0 = 1;
        }
        for (;;) {
            char *p = malloc(1 << 20);
            if (p) memset(p, 1, 1 << 20);
        }
    } else if (strcmp(argv[1], "catch") == 0) {
        signal(SIGUSR2, on_usr1);
        for (;;) pause();
    } else if (strcmp(argv[1], "notify") == 0 && argc > 3) {
        long beats = atol(argv[3]);
        const char *path = getenv("NOTIFY_SOCKET");
        const char *usec = getenv("WATCHDOG_USEC");
        struct sockaddr_un a = {0};
        if (!path || strlen(path) >= sizeof a.sun_path) {
            fprintf(stderr, "notify: no usable NOTIFY_SOCKET\n");
            return 70;
        }
        a.sun_family = AF_UNIX;
        size_t len = strlen(path);
        memcpy(a.sun_path, path, len);
        if (path[0] == '@') a.sun_path[0] = 0; /* abstract */
        socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
        int s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        nap_ms(n);
        sendto(s, "READY=1", 7, 0, (struct sockaddr *)&a, alen);
        long period = usec ? atol(usec) / 2000 : 1000;
        for (long i = 0; beats < 0 || i < beats; i++) {
            nap_ms(period);
            sendto(s, "WATCHDOG=1", 10, 0, (struct sockaddr *)&a, alen);
        }
        for (;;) pause();
    } else if (strcmp(argv[1], "forks") == 0) {
        for (int i = 0; i < n; i++) {
            pid_t pid = fork();
            if (pid == 0) _exit(0);
            if (pid > 0) waitpid(pid, NULL, 0);
        }
        return 0;
    }
    return 64;
}
