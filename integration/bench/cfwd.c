/* cfwd: the minimal C UDP forwarder the media relay benchmark compares against.
 *
 * One socket per relay port, an epoll set, recvmmsg on each ready socket and sendmmsg of the
 * batch from the partner port to the partner's fixed peer: no latching, no statistics, no
 * lookups beyond an array index. It reads an rtpload pairs file
 * (A-endpoint relay-A B-endpoint relay-B per line, IPv4) and relays each call's RTP ports.
 *
 * usage: cfwd PAIRS-FILE
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BATCH 64
#define SLOT 2048

struct port {
	int fd;
	struct sockaddr_in peer;   /* where packets leaving from this port go */
	struct port *partner;      /* packets arriving here leave from partner */
};

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static int parse(const char *s, struct sockaddr_in *sa) {
	char host[64];
	const char *colon = strrchr(s, ':');
	if (!colon || colon - s >= (long)sizeof(host)) return -1;
	memcpy(host, s, colon - s);
	host[colon - s] = 0;
	memset(sa, 0, sizeof(*sa));
	sa->sin_family = AF_INET;
	sa->sin_port = htons((unsigned short)atoi(colon + 1));
	return inet_pton(AF_INET, host, &sa->sin_addr) == 1 ? 0 : -1;
}

static int open_port(const struct sockaddr_in *local) {
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int buf = 1 << 20;
	if (fd < 0) return -1;
	setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &buf, sizeof(buf));
	if (bind(fd, (const struct sockaddr *)local, sizeof(*local)) < 0) { close(fd); return -1; }
	return fd;
}

int main(int argc, char **argv) {
	if (argc != 2) { fprintf(stderr, "usage: cfwd PAIRS-FILE\n"); return 2; }
	FILE *f = fopen(argv[1], "r");
	if (!f) { perror(argv[1]); return 1; }
	int ep = epoll_create1(EPOLL_CLOEXEC);
	size_t n = 0, max = 1 << 16;
	/* ports point at each other: one allocation that never moves */
	struct port *ports = calloc(max, sizeof(*ports));
	char a[64], ra[64], b[64], rb[64];
	while (fscanf(f, "%63s %63s %63s %63s", a, ra, b, rb) == 4) {
		if (n + 2 > max) { fprintf(stderr, "cfwd: too many calls\n"); return 1; }
		struct sockaddr_in la, lb;
		struct port *pa = &ports[n], *pb = &ports[n + 1];
		if (parse(a, &pa->peer) || parse(ra, &la) || parse(b, &pb->peer) || parse(rb, &lb)) {
			fprintf(stderr, "cfwd: bad line %s %s %s %s\n", a, ra, b, rb);
			return 1;
		}
		pa->fd = open_port(&la);
		pb->fd = open_port(&lb);
		if (pa->fd < 0 || pb->fd < 0) { perror("cfwd: bind"); return 1; }
		pa->partner = pb;
		pb->partner = pa;
		for (int i = 0; i < 2; i++) {
			struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &ports[n + i]};
			epoll_ctl(ep, EPOLL_CTL_ADD, ports[n + i].fd, &ev);
		}
		n += 2;
	}
	fclose(f);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	fprintf(stderr, "cfwd: %zu calls ready\n", n / 2);

	static char bufs[BATCH][SLOT];
	static struct iovec iov[BATCH];
	static struct mmsghdr msgs[BATCH];
	struct epoll_event evs[256];
	unsigned long long forwarded = 0;
	while (!stop) {
		int ne = epoll_wait(ep, evs, 256, 200);
		for (int e = 0; e < ne; e++) {
			struct port *p = evs[e].data.ptr, *out = p->partner;
			for (int i = 0; i < BATCH; i++) {
				iov[i].iov_base = bufs[i];
				iov[i].iov_len = SLOT;
				msgs[i].msg_hdr = (struct msghdr){.msg_iov = &iov[i], .msg_iovlen = 1};
			}
			int got = recvmmsg(p->fd, msgs, BATCH, MSG_DONTWAIT, NULL);
			if (got <= 0) continue;
			for (int i = 0; i < got; i++) {
				iov[i].iov_len = msgs[i].msg_len;
				msgs[i].msg_hdr.msg_name = &out->peer;
				msgs[i].msg_hdr.msg_namelen = sizeof(out->peer);
			}
			int sent = sendmmsg(out->fd, msgs, got, MSG_DONTWAIT);
			if (sent > 0) forwarded += sent;
		}
	}
	fprintf(stderr, "cfwd: forwarded %llu\n", forwarded);
	return 0;
}
