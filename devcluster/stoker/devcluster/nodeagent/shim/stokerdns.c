/* Cluster DNS for any dynamically linked program run by the stoker process node
 * agent (devcluster/stoker/devcluster/nodeagent), loaded with LD_PRELOAD: getaddrinfo() and
 * gethostbyname() answer cluster names from the hosts-format file the agent
 * keeps current (env STOKER_NODEAGENT_HOSTS_FILE: "ip name" lines), with the pod
 * namespace's search list (ndots:5) and the pod's own hostname; every other name
 * goes to the real resolver. Test/local use only. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

typedef int (*gai_fn)(const char *, const char *, const struct addrinfo *, struct addrinfo **);
typedef struct hostent *(*ghbn_fn)(const char *);

#define MAXN 512

/* Copy of name without a trailing dot, lowercased. */
static void norm(const char *in, char *out) {
    size_t n = strlen(in);
    if (n >= MAXN) n = MAXN - 1;
    for (size_t i = 0; i < n; i++) out[i] = (in[i] >= 'A' && in[i] <= 'Z') ? in[i] + 32 : in[i];
    out[n] = 0;
    if (n && out[n - 1] == '.') out[n - 1] = 0;
}

#define MAXIP 16
typedef char ipbuf[64];

/* IPs for exactly this name in the hosts file (up to MAXIP); returns the count.
 * *cluster=1 if the name is a known cluster name without addresses ("-" lines). */
static int find_exact(const char *name, ipbuf *ips, int *cluster) {
    const char *path = getenv("STOKER_NODEAGENT_HOSTS_FILE");
    if (!path) return 0;
    FILE *f = fopen(path, "re");
    if (!f) return 0;
    char line[1024], a[64], b[MAXN];
    int n = 0;
    while (n < MAXIP && fgets(line, sizeof line, f)) {
        if (sscanf(line, "%63s %511s", a, b) != 2) continue;
        if (strcmp(b, name) != 0) continue;
        if (strcmp(a, "-") == 0) { *cluster = 1; continue; }
        snprintf(ips[n++], sizeof(ipbuf), "%s", a);
    }
    fclose(f);
    return n;
}

/* >0: number of IPs filled; 0: not a cluster name (use the real resolver);
 * -1: a cluster name without addresses. */
static int lookup(const char *node, ipbuf *ips) {
    char n[MAXN], cand[MAXN + 64];
    int cluster = 0, k;
    if (!node || !*node) return 0;
    norm(node, n);
    const char *own = getenv("STOKER_NODEAGENT_HOSTNAME"), *own_ip = getenv("STOKER_NODEAGENT_POD_IP");
    if (own && own_ip && *own && strcasecmp(n, own) == 0) {
        snprintf(ips[0], sizeof(ipbuf), "%s", own_ip);
        return 1;
    }
    const char *ns = getenv("STOKER_NODEAGENT_NAMESPACE");
    int dots = 0;
    for (const char *p = n; *p; p++) dots += *p == '.';
    size_t len = strlen(node);
    int absolute = len && node[len - 1] == '.';
    if (!absolute && dots < 5 && ns) {
        for (int i = 0; i < 3; i++) {
            if (i == 0) snprintf(cand, sizeof cand, "%s.%s.svc.cluster.local", n, ns);
            else if (i == 1) snprintf(cand, sizeof cand, "%s.svc.cluster.local", n);
            else snprintf(cand, sizeof cand, "%s.cluster.local", n);
            if ((k = find_exact(cand, ips, &cluster)) > 0) return k;
        }
    }
    if ((k = find_exact(n, ips, &cluster)) > 0) return k;
    size_t nl = strlen(n), sl = strlen(".cluster.local");
    if (cluster || (nl > sl && strcmp(n + nl - sl, ".cluster.local") == 0)) return -1;
    return 0;
}

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints, struct addrinfo **res) {
    static gai_fn real;
    if (!real) real = (gai_fn)dlsym(RTLD_NEXT, "getaddrinfo");
    ipbuf ips[MAXIP];
    int n = lookup(node, ips);
    if (n == 0) return real(node, service, hints, res);
    if (n < 0) return EAI_NONAME;
    /* Resolve the IP literal with the caller's hints: an AF_INET6-only caller then
     * gets exactly the error it would get for that literal (and falls back to
     * AF_INET, as torch's TCPStore client does). */
    struct addrinfo h, *head = NULL, **tail = &head;
    memset(&h, 0, sizeof h);
    if (hints) h = *hints;
    h.ai_flags |= AI_NUMERICHOST;
    h.ai_flags &= ~AI_CANONNAME;
    int err = EAI_NONAME;
    for (int i = 0; i < n; i++) {
        struct addrinfo *r = NULL;
        err = real(ips[i], service, &h, &r);
        if (err) continue;
        *tail = r;  /* glibc frees a chain node by node, so chaining results is safe */
        while (*tail) tail = &(*tail)->ai_next;
    }
    if (!head) return err;
    *res = head;
    return 0;
}

struct hostent *gethostbyname(const char *name) {
    static ghbn_fn real;
    if (!real) real = (ghbn_fn)dlsym(RTLD_NEXT, "gethostbyname");
    ipbuf ips[MAXIP];
    int n = lookup(name, ips);
    if (n == 0) return real(name);
    if (n < 0) { h_errno = HOST_NOT_FOUND; return NULL; }
    return real(ips[0]);
}
