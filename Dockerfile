# The framework's image: mr-master, mr-worker, mr and mr-sequential with the
# bundled apps (wordcount, indexer, sort, grep, streaming) in /usr/local/bin,
# run as the unprivileged user mr (uid 10001), working in /srv/mr.
#
# Built by scripts/docker-build.sh, which makes the base from Debian's
# packages (no registry is needed) and stages the host-built, stripped
# binaries as the build context (target/docker/mapreduce/bin).
ARG BASE=mapreduce-base:bookworm
FROM ${BASE}

# No useradd in a minimal Debian: the user and group are written directly.
RUN echo 'mr:x:10001:10001:mapreduce:/srv/mr:/usr/sbin/nologin' >> /etc/passwd \
 && echo 'mr:x:10001:' >> /etc/group \
 && mkdir -p /srv/mr/state /srv/mr/work /data \
 && chown -R 10001:10001 /srv/mr /data

COPY bin/ /usr/local/bin/

USER mr
WORKDIR /srv/mr
# The coordinator's RPC port (workers, clients, every job's traffic) and its
# status page.
EXPOSE 7878 7879
# The coordinator's health: its status page answers. (A worker has none: a
# container running mr-worker should set `healthcheck: disable: true`.)
HEALTHCHECK --interval=10s --timeout=6s --start-period=5s --retries=3 CMD ["mr", "health", "--http", "127.0.0.1:7879"]
CMD ["mr-master", "--help"]
