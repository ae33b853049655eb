/*
 * sendframe IFACE COUNT HEXFRAME...: send each raw Ethernet frame (given in hex) COUNT
 * times on IFACE, 100 ms apart.
 *
 * For the real-Xen suite's guests, which have only busybox: a DHCP offer or a router
 * advertisement sent by a guest is a frame no busybox applet makes. Built statically on
 * the host (deploy/xen-vm/run.sh) and put into the guests' initramfs; the frames are
 * made with scapy in dom0.
 */
#include <arpa/inet.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int unhex(const char *text, unsigned char *buf, size_t size) {
    size_t len = strlen(text);
    if (len % 2 || len / 2 > size || len / 2 < ETH_HLEN)
        return -1;
    for (size_t i = 0; i < len / 2; i++) {
        unsigned int b;
        if (sscanf(text + 2 * i, "%2x", &b) != 1)
            return -1;
        buf[i] = (unsigned char)b;
    }
    return (int)(len / 2);
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: sendframe IFACE COUNT HEXFRAME...\n");
        return 2;
    }
    struct sockaddr_ll to = {.sll_family = AF_PACKET, .sll_halen = ETH_ALEN};
    to.sll_ifindex = (int)if_nametoindex(argv[1]);
    if (!to.sll_ifindex) {
        perror(argv[1]);
        return 1;
    }
    int s = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
    if (s < 0) {
        perror("socket");
        return 1;
    }
    int count = atoi(argv[2]), sent = 0;
    for (int i = 0; i < count; i++) {
        for (int f = 3; f < argc; f++) {
            unsigned char buf[ETH_FRAME_LEN];
            int n = unhex(argv[f], buf, sizeof buf);
            if (n < 0) {
                fprintf(stderr, "sendframe: frame %d is not %d-%d bytes of hex\n", f - 2, ETH_HLEN, ETH_FRAME_LEN);
                return 2;
            }
            memcpy(to.sll_addr, buf, ETH_ALEN);
            if (sendto(s, buf, (size_t)n, 0, (struct sockaddr *)&to, sizeof to) != n) {
                perror("sendto");
                return 1;
            }
            sent++;
            usleep(100000);
        }
    }
    printf("sendframe: %d frames sent on %s\n", sent, argv[1]);
    return 0;
}
