# One image for both roles: `chainrule api` (the default command) and `chainrule worker`.
# See docker-compose.yml and docs/deploy.md. Configuration is environment only
# (REDIS_URL, CHAINRULE_*: docs/architecture.md#configuration).
#
# The base follows Python 3.11 patch releases and Debian bookworm security updates; to
# freeze it completely, pin a digest: FROM python:3.11-slim-bookworm@sha256:<digest>.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Exactly what `pip install .` needs (pyproject.toml, its readme and the four packages of
# [tool.setuptools.packages.find]); .dockerignore keeps everything else out of the context.
# The sources are removed after the install: the code runs from site-packages.
WORKDIR /tmp/chainrule-src
COPY pyproject.toml README.md ./
COPY graphspec ./graphspec
COPY runtime ./runtime
COPY worker ./worker
COPY service ./service
RUN pip install --no-cache-dir . \
    && rm -rf /tmp/chainrule-src \
    && groupadd --gid 10001 chainrule \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin chainrule

WORKDIR /home/chainrule
# Numeric, so `runAsNonRoot`-style checks can verify it without reading /etc/passwd.
USER 10001:10001

# The API's port. Health: GET /healthz (liveness), GET /readyz (Redis + a worker answer);
# python is the probe (the slim image has no curl), e.g.
#   python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
# A worker's probe: celery -A worker.celery_app inspect ping -d celery@$HOSTNAME
# No HEALTHCHECK here: the image runs two roles, each probed differently (docker-compose.yml).
EXPOSE 8000
CMD ["chainrule", "api", "--host", "0.0.0.0", "--port", "8000"]
