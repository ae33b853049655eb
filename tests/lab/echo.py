"""A TCP/UDP echo server and clients for the firewall's lab tests, run inside the lab's
namespaces (`ip netns exec ... python3 echo.py ...`): only the standard library.

    echo.py serve PORT...            TCP and UDP echo on every address, IPv4 and IPv6
    echo.py try tcp|udp HOST PORT    exit 0 if an echo came back within 1.5 s
    echo.py session HOST PORT [SPORT]  one TCP connection (from source port SPORT); each
                                     stdin line is sent, and the echo (or TIMEOUT / CLOSED) printed
"""

from __future__ import annotations

import socket
import struct
import sys
import threading

TIMEOUT = 1.5


def serve(ports: list[int]) -> None:
    def tcp_conn(c: socket.socket) -> None:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # killed: forget at once
        with c:
            while data := c.recv(4096):
                c.sendall(data)

    def tcp(port: int) -> None:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", port))
        s.listen(16)
        while True:
            c, _ = s.accept()
            threading.Thread(target=tcp_conn, args=(c,), daemon=True).start()

    def udp(port: int) -> None:
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", port))
        while True:
            data, peer = s.recvfrom(4096)
            s.sendto(data, peer)

    for p in ports:
        threading.Thread(target=tcp, args=(p,), daemon=True).start()
        threading.Thread(target=udp, args=(p,), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


def family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def attempt(proto: str, host: str, port: int) -> int:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(family(host), kind) as s:
        s.settimeout(TIMEOUT)
        try:
            s.connect((host, port))
            s.send(b"hello")
            ok = s.recv(100) == b"hello"
        except OSError as e:
            print(f"{proto} {host} {port}: {e}")
            return 1
    return 0 if ok else 1


def session(host: str, port: int, sport: int = 0) -> None:
    s = socket.socket(family(host), socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Killed, it aborts (RST) and frees its ports at once, as a crashed client does.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.settimeout(3 * TIMEOUT)  # (a SYN may need one retransmission, after 1 s)
    s.bind(("::" if ":" in host else "0.0.0.0", sport))
    s.connect((host, port))
    s.settimeout(TIMEOUT)
    print("connected", flush=True)
    for line in sys.stdin:
        try:
            s.sendall(line.encode())
            reply = s.recv(4096)
            print(reply.decode().strip() if reply else "CLOSED", flush=True)
        except TimeoutError:
            print("TIMEOUT", flush=True)
        except OSError as e:
            print(f"CLOSED {e}", flush=True)


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "serve":
        serve([int(p) for p in sys.argv[2:]])
    elif cmd == "try":
        sys.exit(attempt(sys.argv[2], sys.argv[3], int(sys.argv[4])))
    elif cmd == "session":
        session(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 0)
