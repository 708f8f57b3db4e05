# One image for both components: `overcommit agent` (the DaemonSet; it runs as root because it
# writes host sysfs/procfs and connects to libvirt sockets) and the controller (the Deployment;
# non-root, which is also this image's default user).
#
#   scripts/docker-base-image          # a local debian:bookworm-slim (no container registry here)
#   docker build -t memory-overcommit:0.1.0 .
#
# Two stages: `build` makes the project's wheel and a virtualenv holding it and its dependencies
# (pure-Python or binary wheels, so no compiler anywhere); the final stage is Debian's Python
# and python3-libvirt plus that virtualenv. libvirt-python from the package registry would have
# to compile against libvirt-dev; Debian's binding is prebuilt for Debian's libvirt, and the
# virtualenv sees it through --system-site-packages.
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null \
 && rm -rf /var/lib/apt/lists/*
# /opt/build holds the build tools; /opt/overcommit (copied into the final image) only what runs.
# Same path and same Debian python3 in both stages, so the copied virtualenv works unchanged.
RUN python3 -m venv /opt/build \
 && python3 -m venv --without-pip --system-site-packages /opt/overcommit
# Dependencies from pyproject.toml alone, before the code is copied: editing the code reuses
# this layer. The image runs local mode, the agent and the controller: the base dependencies and
# the `kube` extra, without the official `kubernetes` client, which nothing in the package
# imports (the agent even hides it from kopf to save 18 MiB per node).
COPY pyproject.toml /src/
RUN python3 -c 'import re, tomllib; \
p = tomllib.load(open("/src/pyproject.toml", "rb")); \
name = lambda req: re.match(r"[A-Za-z0-9._-]+", req).group(); \
run = p["project"]["dependencies"] + p["project"]["optional-dependencies"]["kube"]; \
print(*p["build-system"]["requires"], sep="\n", file=open("/tmp/build.txt", "w")); \
print(*[r for r in run if name(r) != "kubernetes"], sep="\n", file=open("/tmp/run.txt", "w"))' \
 && /opt/build/bin/pip install -q -r /tmp/build.txt \
 && /opt/build/bin/pip --python /opt/overcommit/bin/python install -q -r /tmp/run.txt
COPY README.md /src/
COPY operator /src/operator
# The demo's package data links to these (overcommit/demo/deploy and examples).
COPY deploy /src/deploy
COPY examples /src/examples
RUN /opt/build/bin/pip wheel -q --no-deps --no-build-isolation -w /wheels /src \
 && /opt/build/bin/pip --python /opt/overcommit/bin/python install -q --no-deps /wheels/*.whl

FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends python3 python3-libvirt >/dev/null \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/debconf/*-old /var/log/*
# The controller's user. Numeric in USER so runAsNonRoot can verify it without a passwd lookup.
RUN useradd --system --uid 65532 --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin overcommit
COPY --from=build /opt/overcommit /opt/overcommit
COPY examples /usr/share/memory-overcommit/examples
ENV PATH=/opt/overcommit/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 65532:65532
ENTRYPOINT ["overcommit"]
CMD ["--help"]
# Last, so a new revision only rebuilds this metadata layer.
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="memory-overcommit" \
      org.opencontainers.image.description="Memory overcommit for KubeVirt/KVM nodes: KSM/UKSM, zswap/swap and guest ballooning from one declarative policy (agent and controller)." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="debian:bookworm-slim"
