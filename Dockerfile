# sipcar's image. Build: docker build -t sipcar . (docker-compose.yml builds it as sipcar:latest).
#
# Capabilities, each for a feature (docker-compose.yml adds the first two and drops the rest):
#   NET_ADMIN         the media fan-in: sipcar's nftables table (it runs nft) and transparent
#                     sockets (TPROXY), SIPCAR_MODE=transparent's listeners, and the start-up
#                     probe's veth pair on a bridge. Without it: a socket per relay port.
#   NET_RAW           raw sends of the fan-in relay (one sendmmsg per batch) and the probe's
#                     packet socket. Without it: sends from each relay port's socket, and
#                     bridges are left to the ports' sockets unprobed.
#   NET_BIND_SERVICE  only for listeners below port 1024; 5060 and 5061 need nothing.
# sipcar runs as the user sipcar. The binary carries the three as file capabilities, permitted
# but not effective: execve refuses a binary whose effective file capabilities the container
# does not grant in full, while this way it starts with whatever subset it is given and raises
# that itself (and passes NET_ADMIN on to nft as an ambient capability).

# Classic builder syntax (no RUN --mount for a build cache), which Debian's docker-compose 1.29
# uses too. Instead, layers keep what is slow to redo: the modules, and the packages of other
# modules compiled, each rebuilt only when what it depends on changes.
FROM golang:1.26-bookworm AS modules
WORKDIR /src
# No cgo: static, and sipcar can set its capabilities on every thread (AllThreadsSyscall).
ENV CGO_ENABLED=0
COPY go.mod go.sum ./
RUN go mod download

# The packages sipcar imports from other modules; the list changes when an import does.
FROM modules AS deps
COPY . .
RUN go list -deps -f '{{if not .Standard}}{{.ImportPath}}{{end}}' ./cmd/sipcar | grep -v '^github.com/sipcar/sipcar' >/deps.txt

FROM modules AS build
COPY --from=deps /deps.txt /deps.txt
# Compiled into the Go build cache of this layer, with the flags of the build below.
RUN go build -trimpath $(cat /deps.txt)
COPY . .
RUN go build -trimpath -ldflags="-s -w" -o /out/sipcar ./cmd/sipcar

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables libcap2-bin \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin sipcar
COPY --from=build /out/sipcar /usr/local/bin/sipcar
# Here, not in the build stage: the classic builder's COPY drops file capabilities.
RUN setcap cap_net_admin,cap_net_raw,cap_net_bind_service,cap_bpf=p /usr/local/bin/sipcar
USER sipcar
ENTRYPOINT ["/usr/local/bin/sipcar"]
